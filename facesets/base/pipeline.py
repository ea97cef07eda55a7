"""Small pieces the stages share: bounded parallel maps and reading a photo's bytes.

Kept free of heavy imports (numpy, OpenCV, onnxruntime) so that a stage that finds nothing to do starts
and ends fast.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import blake3

from .errors import ImageLoadError
from .settings import DEFAULT_MAX_BYTES

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``pool.map`` with at most ``window`` items in flight, yielding results in input order."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


def open_regular(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, int]:
    """An open descriptor of ``path`` and its size, or :class:`ImageLoadError`: only a regular file (a FIFO,
    socket or device, even behind a symlink, is refused without blocking on it) of at most ``max_bytes``."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        raise ImageLoadError(f"unreadable: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise ImageLoadError(f"too large: {info.st_size:,} bytes, over --max-bytes {max_bytes:,}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def read_image(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes, or :class:`ImageLoadError` saying why they cannot be read (see :func:`open_regular`);
    a file that grows past ``max_bytes`` while it is read is refused too, so memory stays bounded."""
    fd, _ = open_regular(path, max_bytes)
    try:
        with os.fdopen(fd, "rb", closefd=True) as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageLoadError(f"unreadable: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise ImageLoadError(f"too large: grew past --max-bytes {max_bytes:,} while being read")
    return data


def hash_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, int]:
    """The BLAKE3 of a regular file, streamed (never whole in memory), and its size; refusals as
    :func:`open_regular`."""
    fd, _ = open_regular(path, max_bytes)
    hasher, size = blake3.blake3(), 0
    try:
        with os.fdopen(fd, "rb", closefd=True) as handle:
            while chunk := handle.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageLoadError(f"too large: grew past --max-bytes {max_bytes:,} while being read")
                hasher.update(chunk)
    except OSError as exc:
        raise ImageLoadError(f"unreadable: {exc.strerror or exc}") from exc
    return hasher.hexdigest(), size
