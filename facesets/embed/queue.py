"""The embed stage: a queue of images in, a face cache out.

    queue entries -> [read + BLAKE3 + decode]  (io pool, --io-concurrency threads)
                  -> [detect + align + embed]  (inference pool, --concurrency threads)
                  -> cache journal, flushed every --flush-every images

Both pools have a bounded number of items in flight, so memory does not grow with the queue. Images
already in the cache (by path; errors too unless ``retry_errors``) are skipped without being read; an
image whose bytes equal an image already embedded is recorded as a duplicate without inference.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..artifacts.cache import EMBEDDING_DIM, META_DTYPE, CacheWriter, faces_to_arrays
from ..artifacts.queue import QueueEntry, read_queue
from ..artifacts.records import ImageRecord, ImageStatus
from ..base.pipeline import Buffers
from ..base.progress import ProgressFactory
from ..base.settings import DEFAULT_DET_SIZES, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Mode
from ..models.decode import jpeg_decoder
from ..models.faces import FaceEngine, build_engine
from ..models.packs import DEFAULT_PACK, resolve_pack
from ..models.runtime import is_cpu_only, runtime_options
from .stages import Claims, Read, analyze, count_reason, decode_into, read_and_claim, run_stages

log = logging.getLogger(__name__)


# In fast mode a JPEG is decoded at the largest DCT reduction that keeps this long side (twice the detector's
# 640: a 12 MP photo at 1/2, 24-48 MP at 1/4), finer only for the faces too small in it.
FAST_DECODE_LONG_SIDE = 1280


@dataclass(frozen=True)
class EmbedConfig:
    queue: Path
    cache: Path
    model_dir: Path | None = None
    model_pack: str = DEFAULT_PACK
    providers: tuple[str, ...] = ()
    concurrency: int = 0  # 0: one per CPU core on the CPU provider, 1 on an accelerator
    io_concurrency: int = 0  # 0: as many as --concurrency (at least 2)
    min_face: float = 0.0
    det_sizes: tuple[int, ...] = DEFAULT_DET_SIZES
    mode: Mode = Mode.REFERENCE
    flush_every: int = 200
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES  # files larger than this are refused before they are read
    retry_errors: bool = False


@dataclass
class EmbedStats:
    queued: int = 0
    already_done: int = 0
    duplicates: int = 0
    embedded: int = 0
    faces: int = 0
    no_face: int = 0
    errors: int = 0
    changed_since_queued: int = 0
    elapsed: float = 0.0
    error_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    """What the embed stage learned of one queued image, ready to record: plain values and face rows, so that
    a worker on another machine can send it back (:mod:`facesets.embed.shards`)."""

    entry: QueueEntry
    digest: str = ""
    size: int = 0
    new: bool = False  # the bytes were claimed by this image (False: a duplicate of an image seen before)
    width: int = 0
    height: int = 0
    error: str = ""
    transient: bool = False  # the error is no property of the image: not recorded, tried again next run
    missing: bool = False  # the file is not there where this was computed (a worker may not see it)
    meta: NDArray[Any] = field(default_factory=lambda: np.zeros(0, META_DTYPE))
    vectors: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))

    @property
    def faces(self) -> int:
        return len(self.meta)


def run_embed(config: EmbedConfig, progress: ProgressFactory | None = None) -> EmbedStats:
    """Embed every queued image not in the cache yet; return the counters."""
    started = time.monotonic()
    entries = read_queue(config.queue)
    pack = resolve_pack(config.model_dir, config.model_pack)
    options = runtime_options(config.providers)
    workers = inference_workers(config, options.providers)
    log.info("model pack %s, providers %s, %d inference workers", pack.folder, ", ".join(options.providers), workers)
    log.info("JPEG decoder: %s", jpeg_decoder())
    engine = build_engine(pack, options, config.det_sizes, config.min_face, config.mode is Mode.REFERENCE)
    writer = CacheWriter(config.cache, pack.identity())
    stats = EmbedStats(queued=len(entries))
    try:
        todo = select_todo(entries, writer, config, stats)
        bar = progress(len(todo)) if progress else None
        claims = Claims(embedded_hashes(writer))
        for outcome in ImageWork(engine, config, claims).run(todo, workers):
            record(outcome, writer, stats)
            if writer.pending_images >= config.flush_every:
                writer.flush()
            if bar:
                bar.advance()
        if bar:
            bar.close()
        writer.close(compact=True)  # one file to carry back from the embedding machine
    except BaseException:
        writer.abandon()
        raise
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


def inference_workers(config: EmbedConfig, providers: tuple[str, ...]) -> int:
    """The inference threads of one machine: ``--concurrency``, or one per core on the CPU, 1 on an accelerator."""
    return config.concurrency or (os.cpu_count() or 1 if is_cpu_only(providers) else 1)


def select_todo(
    entries: list[QueueEntry], writer: CacheWriter, config: EmbedConfig, stats: EmbedStats
) -> list[QueueEntry]:
    """The queued images the cache does not hold yet (errors too with ``retry_errors``), each path once."""
    done = {record.path: record for record in writer.done_images()}
    todo, seen = [], set()
    for entry in entries:
        done_record = done.get(entry.path)
        if entry.path in seen or (
            done_record and not (config.retry_errors and done_record.status is ImageStatus.ERROR)
        ):
            stats.already_done += 1
            continue
        seen.add(entry.path)
        todo.append(entry)
    return todo


def embedded_hashes(writer: CacheWriter) -> list[str]:
    """The content hashes the cache holds faces (or no faces) for: bytes seen again are duplicates."""
    return [r.content_hash for r in writer.done_images() if r.status in (ImageStatus.OK, ImageStatus.NO_FACE)]


class ImageWork:
    """The io and inference stage functions of one run (:mod:`facesets.embed.stages`); ``read`` gives an
    entry's bytes (by default: its file on this machine)."""

    def __init__(
        self,
        engine: FaceEngine,
        config: EmbedConfig,
        claims: Claims,
        read: Callable[[QueueEntry], Read] | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.claims = claims
        self.read = read or (lambda entry: read_and_claim(entry.local_path(), claims, config.max_bytes))
        self.buffers = Buffers(keep=0)

    def run(self, entries: Iterable[QueueEntry], workers: int) -> Iterator[Outcome]:
        """The outcome of every entry, in order, through the two bounded pools."""
        io_workers = self.config.io_concurrency or max(2, workers)
        # decode memory is reused; one spare buffer per inference worker stays mapped between images
        self.buffers = Buffers(keep=workers)
        return run_stages(entries, self.load, self.infer, workers, io_workers)

    def load(self, entry: QueueEntry) -> tuple[QueueEntry, Read]:
        read = self.read(entry)
        if read.error or not read.new:
            return entry, read
        fit = FAST_DECODE_LONG_SIDE if self.config.mode is Mode.FAST else None
        return entry, decode_into(read, self.claims, self.config.max_pixels, fit, self.buffers)

    def infer(self, loaded: tuple[QueueEntry, Read]) -> Outcome:
        entry, read = loaded
        image = read.image
        width, height = (image.width, image.height) if image else (0, 0)
        size = len(read.data) if read.data else entry.size
        base = Outcome(entry, read.digest, size, read.new, width, height, read.error, read.transient, read.missing)
        if image is None:
            return base
        try:
            analysis = analyze(self.engine, image, read.data, self.config.max_pixels, self.buffers)
        finally:
            self.buffers.give(image.buffer)
        if analysis.transient:
            self.claims.release(read.digest)
        if analysis.error:
            return replace(base, error=analysis.error, transient=analysis.transient)
        meta, vectors = faces_to_arrays(0, analysis.value or [])
        return replace(base, meta=meta, vectors=vectors)


def record(outcome: Outcome, writer: CacheWriter, stats: EmbedStats) -> None:
    """Add one outcome to the cache journal and the counters (a transient error is counted, not recorded)."""
    entry = outcome.entry
    if outcome.error:
        status = ImageStatus.ERROR
        stats.errors += 1
        count_reason(stats.error_reasons, outcome.error)
        log.warning("skipping %s: %s", entry.path, outcome.error)
        if outcome.transient:
            return  # not recorded: the next run tries the image again
    elif not outcome.new:
        status = ImageStatus.DUPLICATE
        stats.duplicates += 1
    else:
        status = ImageStatus.OK if outcome.faces else ImageStatus.NO_FACE
        stats.embedded += 1
        stats.faces += outcome.faces
        stats.no_face += 0 if outcome.faces else 1
    if entry.content_hash and outcome.digest and entry.content_hash != outcome.digest:
        stats.changed_since_queued += 1
    image = ImageRecord(
        entry.path,
        outcome.digest,
        outcome.size,
        status,
        outcome.error,
        outcome.width,
        outcome.height,
        outcome.faces,
        entry.source,
    )
    aliases = {entry.path: entry.windows_path} if entry.windows_path else None
    writer.add_rows(image, outcome.meta if status is ImageStatus.OK else None, outcome.vectors, aliases)
