"""The per-image stages that ``embed`` and ``index`` share, and the two bounded pools that run them.

    item -> [read (regular files only, --max-bytes) + BLAKE3 + claim + decode]   io pool
         -> [detect + align + embed]                                          inference pool

A content hash is *claimed* by the first item that reads it: a second item with the same bytes gets no face
work (a duplicate). A claim is released when its image fails for a reason that is no property of the image
(out of memory), so that a later item or run tries it again. Every per-image failure becomes that image's
error reason; nothing but a missing model or an unwritable cache ends a run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import blake3

from ..base.errors import OUT_OF_MEMORY, ImageLoadError, is_out_of_memory
from ..base.pipeline import Buffers, bounded_map, read_image

if TYPE_CHECKING:
    from ..models.decode import DecodedImage
    from ..models.faces import Face, FaceEngine

T = TypeVar("T")
L = TypeVar("L")
R = TypeVar("R")


class Claims:
    """The content hashes already claimed, shared by the io threads; ``known`` answers for hashes recorded
    before this run (the cache's or the index state's)."""

    def __init__(self, claimed: Iterable[str] = (), known: Callable[[str], bool] | None = None) -> None:
        self._claimed = set(claimed)
        self._known = known
        self._lock = threading.Lock()

    def claim(self, digest: str) -> bool:
        """True when ``digest`` is new: this caller does its work; False: it is a duplicate."""
        with self._lock:
            if digest in self._claimed or (self._known is not None and self._known(digest)):
                self._claimed.add(digest)
                return False
            self._claimed.add(digest)
            return True

    def release(self, digest: str) -> None:
        with self._lock:
            self._claimed.discard(digest)


@dataclass
class Read:
    """An image after the io stage: its bytes and hash, its pixels when it needs face work, or its error."""

    data: bytes = b""
    digest: str = ""
    new: bool = False  # claimed by this item (False: the bytes were seen before)
    image: DecodedImage | None = None
    error: str = ""
    transient: bool = False  # the error is no property of the image (out of memory): not recorded, retried
    missing: bool = False  # no file of that name here (another machine may see it)


def read_and_claim(path: str, claims: Claims, max_bytes: int) -> Read:
    """Read ``path`` (a regular file of at most ``max_bytes``), hash it and claim the hash."""
    try:
        data = read_image(path, max_bytes)
    except ImageLoadError as exc:
        return Read(error=exc.reason, missing=not os.path.lexists(path))
    return claim_bytes(data, claims)


def claim_bytes(data: bytes, claims: Claims) -> Read:
    """``data`` hashed, its hash claimed."""
    digest = blake3.blake3(data).hexdigest()
    return Read(data, digest, claims.claim(digest))


def decode_into(
    read: Read, claims: Claims, max_pixels: int, fit: int | None = None, buffers: Buffers | None = None
) -> Read:
    """Decode ``read``'s bytes (``fit``: the long side a fast JPEG decode may shrink to; ``buffers``: the
    memory lent for it, given back by whoever is done with the pixels); a transient failure releases the
    claim."""
    from ..models.decode import decode

    try:
        read.image = decode(read.data, max_pixels=max_pixels, fit=fit, buffers=buffers)
    except ImageLoadError as exc:
        read.error, read.transient = exc.reason, exc.transient
        read.data = b""
        if exc.transient and read.new:
            claims.release(read.digest)
    return read


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """What one image's model work gave: its value, or the error that is that image's alone."""

    value: T | None
    error: str = ""
    transient: bool = False


def attempt(work: Callable[[], T]) -> Attempt[T]:
    """``work()``, with any failure of it made that image's error (out of memory: a transient one)."""
    try:
        return Attempt(work())
    except ImageLoadError as exc:
        return Attempt(None, exc.reason, exc.transient)
    except Exception as exc:  # an inference failure on one image must not end a long run
        if is_out_of_memory(exc):
            return Attempt(None, OUT_OF_MEMORY, transient=True)
        return Attempt(None, f"inference failed: {type(exc).__name__}: {exc}")


def analyze(
    engine: FaceEngine, image: DecodedImage, data: bytes, max_pixels: int, buffers: Buffers | None = None
) -> Attempt[list[Face]]:
    """The faces of one decoded image (``data``: its bytes, decoded again at a finer scale for small faces,
    into memory lent by ``buffers`` and given back before this returns)."""
    from ..models.decode import decode

    finer: list[DecodedImage] = []

    def redecode(scale: float) -> DecodedImage:
        finer.append(decode(data, scale, max_pixels, buffers=buffers))
        return finer[-1]

    try:
        return attempt(lambda: engine.analyze(image, redecode))
    finally:
        if buffers is not None:
            for done in finer:
                buffers.give(done.buffer)


def run_stages(
    items: Iterable[T], load: Callable[[T], L], infer: Callable[[L], R], workers: int, io_workers: int
) -> Iterator[R]:
    """``infer(load(item))`` for every item, in order: ``load`` on ``io_workers`` threads, ``infer`` on
    ``workers``, each with a bounded number of items in flight (memory does not grow with the input)."""
    with (
        ThreadPoolExecutor(io_workers, thread_name_prefix="io") as io_pool,
        ThreadPoolExecutor(workers, thread_name_prefix="infer") as ml_pool,
    ):
        loaded = bounded_map(io_pool, load, items, window=2 * io_workers)
        yield from bounded_map(ml_pool, infer, loaded, window=2 * workers)


def reason_key(reason: str) -> str:
    """The kind of an error or skip reason, for the counts of a summary: its text before any detail in
    parentheses or after a colon ("image too large: 12000x12000 ..." -> "image too large")."""
    return reason.split(" (")[0].split(":")[0]


def count_reason(counts: dict[str, int], reason: str) -> None:
    key = reason_key(reason)
    counts[key] = counts.get(key, 0) + 1
