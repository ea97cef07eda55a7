"""Crash-safe file writes: a crash at any instant leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` atomically when the block ends without an error.

    The data goes to a temporary file in the same folder, is fsync-ed, then renamed over ``path``.
    On any error (a full disk included) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_json(path: Path, value: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``value`` as indented JSON, atomically."""
    data = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=default)
    atomic_write_bytes(path, data + b"\n")


def temp_pattern(name: str) -> str:
    """The glob that matches the temporary files :func:`atomic_writer` makes for a file called ``name``."""
    return f".{name}.*.tmp"


def remove_stale_temps(directory: Path, pattern: str) -> int:
    """Delete temporary files that killed writes left behind (``pattern`` from :func:`temp_pattern`)."""
    removed = 0
    for tmp in directory.glob(pattern):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    Raises :class:`FacesetsError` at once when another process holds it, or with ``wait`` waits for it (for
    short critical sections). The lock dies with the process, so a ``kill -9`` never leaves a stale lock.
    """
    from .errors import FacesetsError

    handle = open(path, "a+b")  # noqa: SIM115 - closed in finally
    try:
        try:
            _lock_file(handle, wait)
        except OSError as exc:
            raise FacesetsError(
                f"{path} is locked by another facesets process working on the same file; wait for it to finish"
            ) from exc
        yield
    finally:
        handle.close()


def _lock_file(handle: IO[bytes], wait: bool = False) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
