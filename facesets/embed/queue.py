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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..artifacts.cache import CacheWriter
from ..artifacts.queue import QueueEntry, read_queue
from ..artifacts.records import ImageRecord, ImageStatus
from ..base.progress import Progress, ProgressFactory
from ..base.settings import DEFAULT_DET_SIZES, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Mode
from ..models.faces import Face, FaceEngine, build_engine
from ..models.packs import DEFAULT_PACK, resolve_pack
from ..models.runtime import is_cpu_only, runtime_options
from .stages import Claims, Read, analyze, count_reason, decode_into, read_and_claim, run_stages

log = logging.getLogger(__name__)


# In fast mode a JPEG is decoded at the largest DCT reduction that keeps this long side.
FAST_DECODE_LONG_SIDE = 2000


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
class Analyzed:
    entry: QueueEntry
    read: Read
    faces: list[Face]
    error: str = ""
    transient: bool = False


def run_embed(config: EmbedConfig, progress: ProgressFactory | None = None) -> EmbedStats:
    """Embed every queued image not in the cache yet; return the counters."""
    started = time.monotonic()
    entries = read_queue(config.queue)
    pack = resolve_pack(config.model_dir, config.model_pack)
    options = runtime_options(config.providers)
    workers = config.concurrency or (os.cpu_count() or 1 if is_cpu_only(options.providers) else 1)
    log.info("model pack %s, providers %s, %d inference workers", pack.folder, ", ".join(options.providers), workers)
    square = config.mode is Mode.REFERENCE
    engine = build_engine(pack, options, config.det_sizes, config.min_face, square)
    writer = CacheWriter(config.cache, pack.identity())
    stats = EmbedStats(queued=len(entries))
    try:
        todo = _select_todo(entries, writer, config, stats)
        bar = progress(len(todo)) if progress else None
        _run_pipeline(todo, engine, writer, config, stats, workers, bar)
        if bar:
            bar.close()
        writer.close(compact=True)  # one file to carry back from the embedding machine
    except BaseException:
        writer.abandon()
        raise
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


def _select_todo(
    entries: list[QueueEntry], writer: CacheWriter, config: EmbedConfig, stats: EmbedStats
) -> list[QueueEntry]:
    done = {record.path: record for record in writer.done_images()}
    todo, seen = [], set()
    for entry in entries:
        record = done.get(entry.path)
        if entry.path in seen or (record and not (config.retry_errors and record.status is ImageStatus.ERROR)):
            stats.already_done += 1
            continue
        seen.add(entry.path)
        todo.append(entry)
    return todo


class _Stages:
    """The io and inference stage functions of one run (:mod:`facesets.embed.stages`)."""

    def __init__(self, engine: FaceEngine, writer: CacheWriter, config: EmbedConfig) -> None:
        self.engine = engine
        self.config = config
        self.claims = Claims(
            r.content_hash for r in writer.done_images() if r.status in (ImageStatus.OK, ImageStatus.NO_FACE)
        )

    def load(self, entry: QueueEntry) -> tuple[QueueEntry, Read]:
        read = read_and_claim(entry.local_path(), self.claims, self.config.max_bytes)
        if read.error or not read.new:
            return entry, read
        fit = FAST_DECODE_LONG_SIDE if self.config.mode is Mode.FAST else None
        return entry, decode_into(read, self.claims, self.config.max_pixels, fit)

    def infer(self, loaded: tuple[QueueEntry, Read]) -> Analyzed:
        entry, read = loaded
        if read.image is None:
            return Analyzed(entry, read, [])
        analysis = analyze(self.engine, read.image, read.data, self.config.max_pixels)
        if analysis.transient:
            self.claims.release(read.digest)
        return Analyzed(entry, read, analysis.value or [], analysis.error, analysis.transient)


def _run_pipeline(
    todo: list[QueueEntry],
    engine: FaceEngine,
    writer: CacheWriter,
    config: EmbedConfig,
    stats: EmbedStats,
    workers: int,
    bar: Progress | None,
) -> None:
    stages = _Stages(engine, writer, config)
    io_workers = config.io_concurrency or max(2, workers)
    for result in run_stages(todo, stages.load, stages.infer, workers, io_workers):
        _record(result, writer, stats)
        if writer.pending_images >= config.flush_every:
            writer.flush()
        if bar:
            bar.advance()


def _record(result: Analyzed, writer: CacheWriter, stats: EmbedStats) -> None:
    entry, read = result.entry, result.read
    error = result.error or read.error
    size = len(read.data) if read.data else entry.size
    image = read.image
    width, height = (image.width, image.height) if image else (0, 0)
    if error:
        status = ImageStatus.ERROR
        stats.errors += 1
        count_reason(stats.error_reasons, error)
        log.warning("skipping %s: %s", entry.path, error)
        if result.transient or read.transient:
            return  # not recorded: the next run tries the image again
    elif not read.new:
        status = ImageStatus.DUPLICATE
        stats.duplicates += 1
    else:
        status = ImageStatus.OK if result.faces else ImageStatus.NO_FACE
        stats.embedded += 1
        stats.faces += len(result.faces)
        stats.no_face += 0 if result.faces else 1
    if entry.content_hash and read.digest and entry.content_hash != read.digest:
        stats.changed_since_queued += 1
    record = ImageRecord(entry.path, read.digest, size, status, error, width, height, len(result.faces), entry.source)
    writer.add(record, result.faces, {entry.path: entry.windows_path} if entry.windows_path else None)
