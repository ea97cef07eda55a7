"""The ``facesets`` group and ``main``: verbosity, and every error mapped to one message and an exit code."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import click

from .. import __version__
from ..base.errors import FacesetsError
from ..base.messages import SafeFormatter, safe, safe_lines
from .cluster import cluster_command, export_command
from .embed import cache, embed, queue
from .flow import finalize_command
from .immich import immich
from .index import backfill, index
from .review import serve
from .store import load, migrate, persons, search_command, similar_command

# Stage modules (numpy, OpenCV, onnxruntime behind them) are imported inside the commands that use them,
# so that `--help` and runs with nothing to do start fast.

log = logging.getLogger("facesets")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facesets")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More messages: -v for progress notes, -vv for debugging (before or after the command's name).",
)
def cli(verbose: int) -> None:
    """Turn photo libraries into searchable faces and identities.

    Stages pass versioned files to each other (queue.json -> face cache .npz), so each can run on
    another machine and resume after a crash. See the README for the whole workflow.
    """
    set_verbosity(verbose)


VERBOSE = {"-v": 1, "-vv": 2, "-vvv": 3, "--verbose": 1}


def set_verbosity(verbose: int) -> None:
    """Log records to stderr at the level ``-v`` asks for, each line without secrets or control characters."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(SafeFormatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (not the stream of the first call: a library
    caller or a test may replace it between runs)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _take_verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """-v/-vv/--verbose anywhere before a ``--``, counted and taken out (so ``facesets embed -v`` works)."""
    verbose, rest = 0, list[str]()
    for position, arg in enumerate(argv):
        if arg == "--":
            return verbose, rest + argv[position:]
        if arg in VERBOSE:
            verbose += VERBOSE[arg]
        else:
            rest.append(arg)
    return verbose, rest


for command in (
    queue,
    embed,
    cache,
    index,
    backfill,
    cluster_command,
    export_command,
    migrate,
    load,
    persons,
    search_command,
    similar_command,
    immich,
    finalize_command,
    serve,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None, command: click.Command | None = None, prog_name: str = "facesets") -> int:
    """Run the CLI (or one ``command`` of it under ``prog_name``, for the scripts of work/) and map errors to
    messages and exit codes; returns the exit code."""
    verbose, args = _take_verbosity(list(sys.argv[1:] if argv is None else argv))
    set_verbosity(verbose)
    if command is None:
        command, args = cli, ["-v"] * verbose + args
    with _terminate_as_interrupt():
        return _run(command, args, prog_name)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a service manager stopping the run): unwinds like Ctrl-C, so what was done is flushed."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` in the main thread (where Python runs signal
    handlers); the previous handler comes back after it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def terminate(_signum: int, _frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(command: click.Command, args: list[str], prog_name: str) -> int:
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except FacesetsError as exc:
        click.echo(f"error: {safe_lines(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            return _interrupted(exc.__cause__)
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        shown = io.StringIO()
        exc.show(file=shown)
        click.echo("\n".join(safe(line) for line in shown.getvalue().splitlines()), err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except OSError as exc:  # what a library call did not turn into a message of its own
        click.echo(f"error: {safe(_os_message(exc))}", err=True)
        return 1
    except Exception as exc:  # never a traceback: the details with -vv
        log.debug("unexpected error", exc_info=True)
        if type(exc).__name__ == "DiskFull":  # psycopg's: the database server ran out of space
            click.echo(
                "error: the database server's disk is full: what was committed before is kept; free space on the "
                "server and run the same command again",
                err=True,
            )
            return 1
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(
            f"error: {safe(type(exc).__name__)}: {safe(first)} (run with -vv for the details; this is a bug in "
            "facesets, please report it)",
            err=True,
        )
        return 1
    return code if isinstance(code, int) else 0


def _os_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (
            f"the disk is full (writing{where}): what was written before is kept; free space and run the same "
            "command again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where or ' a file'}"
    return f"{exc.strerror or type(exc).__name__}:{where or ' (no file named)'}"


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C exits 130, SIGTERM 143 (128 + the signal's number, as a shell reports them)."""
    what, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
    click.echo(f"{what}: what was flushed is kept; run the same command again to continue", err=True)
    return code


def run() -> None:
    sys.exit(main())
