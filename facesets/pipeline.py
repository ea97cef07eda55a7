"""Small pieces the stages share: bounded parallel maps and reading a photo's bytes.

Kept free of heavy imports (numpy, OpenCV, onnxruntime) so that a stage that finds nothing to do starts
and ends fast.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .errors import ImageLoadError

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


def read_image(path: str) -> bytes:
    """The file's bytes, or :class:`ImageLoadError` saying why they cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ImageLoadError(f"unreadable: {exc.strerror or exc}") from exc
