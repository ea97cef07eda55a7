"""Small pieces the stages share: bounded parallel maps and reading a photo's bytes.

Kept free of heavy imports (numpy, OpenCV, onnxruntime) so that a stage that finds nothing to do starts
and ends fast.
"""

from __future__ import annotations

import os
import stat
import threading
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


class Buffers:
    """Memory lent to the items in flight and given back, so that big decodes reuse pages already mapped (a
    fresh array of 36-144 MB costs more in page faults than decoding a photo into it).

    :meth:`take` lends the smallest free buffer of the size asked up to twice that (or makes one: a small image
    never holds on to a big buffer that a big image then lacks); :meth:`give` takes a buffer back; at most
    ``keep`` free buffers are kept (the largest), so what stays mapped is bounded by the items in flight, not by
    the library. Thread-safe."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            fitting = [i for i, buffer in enumerate(self._free) if size <= len(buffer) <= 2 * size]
            if fitting:
                return self._free.pop(min(fitting, key=lambda i: len(self._free[i])))
        return bytearray(size)

    def give(self, buffer: bytearray | None) -> None:
        """Take back a buffer (an image's ``buffer``; None: nothing); whatever lives in it must be done with."""
        if buffer is None:
            return
        with self._lock:
            self._free.append(buffer)
            self._free.sort(key=len)
            del self._free[: max(0, len(self._free) - self.keep)]
