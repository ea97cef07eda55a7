"""The gallery index stage (``facesets index``) and its stat-only companion (``facesets backfill``).

    targets -> galleries (walk) -> files (stat) -> skip layers -> [read + BLAKE3 + decode] -> [faces] -> cache
                                                                  (--io-concurrency)        (--concurrency)

Skip layers, each counted in :class:`IndexStats`:

1. gallery: image-file count and total bytes equal those stored at its last complete index -> skipped
   without reading any file (``--reindex`` bypasses this layer only);
2. one state query per gallery fetches every known ``(filename, content hash, size)``;
3. a file whose name and size are known is skipped without being read or hashed (an edit that keeps the
   size is therefore not seen until ``--reindex``... nor then: use ``--ml-purge`` to re-read everything);
4. a file that is read is hashed with BLAKE3; a hash already known (any gallery) gets no ML work, only a
   new gallery link.

Faces go to the face cache (``<caches>/faces.npz``), the state to ``<caches>/index.sqlite``; the state is
committed only after the cache has flushed the same images, so ``kill -9`` at any point resumes cleanly.

The models, the face cache and the heavy libraries behind them (numpy, OpenCV, onnxruntime) are loaded only
when a run finds a file to read, so a re-run of an unchanged tree costs little more than the walk itself.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson

from ..artifacts.clipstore import ClipStore
from ..artifacts.indexstate import GalleryRow, IndexState, KnownFile
from ..artifacts.layout import CLIP_STORE, FACE_CACHE, INDEX_STATE
from ..artifacts.records import ImageRecord, ImageStatus, Source, SourceKind
from ..base.errors import ConfigError, ModelPackError
from ..base.pipeline import Buffers
from ..base.progress import ProgressFactory
from ..base.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from ..models.clip import DEFAULT_CLIP_MODEL, SKIP_HINT, ClipIdentity, clip_identity, resolve_clip
from ..models.packs import DEFAULT_PACK, ModelPack, PackIdentity, resolve_pack
from ..models.runtime import Lazy, runtime_options
from ..sources.galleries import Gallery, check_targets, gallery_folders, gallery_totals, list_gallery
from .stages import Claims, Read, analyze, attempt, count_reason, decode_into, read_and_claim, run_stages

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..artifacts.cache import CacheWriter
    from ..models.clipvisual import ClipVisual
    from ..models.faces import Face, FaceEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    targets: tuple[Path, ...]
    caches: Path = Path("caches")
    model_dir: Path | None = None
    model_pack: str = DEFAULT_PACK
    providers: tuple[str, ...] = ()
    concurrency: int = 4
    io_concurrency: int = 0  # 0: twice --concurrency
    reindex: bool = False
    ml_purge: bool = False
    flush_every: int = 200
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES  # files larger than this are refused before they are read
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_dir: Path | None = None
    no_clip: bool = False


@dataclass
class IndexStats:
    galleries_seen: int = 0
    galleries_skipped: int = 0
    files_stated: int = 0
    files_skipped_by_size: int = 0
    files_read: int = 0
    files_deduped: int = 0
    files_embedded: int = 0
    files_failed: int = 0
    files_removed: int = 0
    faces_found: int = 0
    clip_embedded: int = 0
    walk_skips: int = 0
    elapsed: float = 0.0
    skip_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class WorkItem:
    gallery_id: int
    gallery: str
    filename: str
    size: int


@dataclass
class Done:
    item: WorkItem
    content_hash: str = ""
    faces: list[Face] = field(default_factory=list)
    error: str = ""
    deduped: bool = False  # content already has faces: no face ML
    need_clip: bool = False
    clip_vector: NDArray[np.float32] | None = None
    width: int = 0
    height: int = 0
    size: int = -1  # bytes actually read (a file replaced after its stat is recorded as read)
    transient: bool = False  # the error is no property of the file (out of memory): not recorded, retried


class _Galleries:
    """Per-gallery bookkeeping: which galleries wait for results before their stats may be stored."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}
        self.listing: dict[int, Gallery] = {}

    def open(self, gallery_id: int, gallery: Gallery, items: int) -> None:
        self.pending[gallery_id] = items
        self.listing[gallery_id] = gallery

    def finish_one(self, gallery_id: int) -> Gallery | None:
        self.pending[gallery_id] -= 1
        return self.close_if_done(gallery_id)

    def close_if_done(self, gallery_id: int) -> Gallery | None:
        if self.pending.get(gallery_id) == 0:
            del self.pending[gallery_id]
            return self.listing.pop(gallery_id)
        return None


class FaceModel(Protocol):
    """What index needs of the face model: the identity it records in the state and the cache, and the engine
    for an image that needs faces. A model whose ``reads_pixels`` is False does no face work and no decode
    (the benchmark of the skip machinery supplies one); the default is the configured model pack."""

    @property
    def identity(self) -> PackIdentity: ...

    @property
    def reads_pixels(self) -> bool: ...

    def engine(self) -> FaceEngine: ...


def run_index(
    config: IndexConfig, progress: ProgressFactory | None = None, face_model: FaceModel | None = None
) -> IndexStats:
    """Index every gallery under the targets; ``progress(total)`` makes the bar over the files to read."""
    started = time.monotonic()
    targets = check_targets(list(config.targets))
    if next(iter(gallery_folders(targets, lambda _path, _why: None)), None) is None:
        raise ConfigError(
            f"no gallery found under {', '.join(map(str, targets))}: index works on galleries (folders with an "
            "index.json and a tn/ folder). For plain folders of photos use `facesets queue add --queue "
            "queue.json FOLDER` and then `facesets embed --queue queue.json --cache caches/faces.npz`."
        )
    config.caches.mkdir(parents=True, exist_ok=True)
    clip = None if config.no_clip else _ClipParts.open(config)
    state = IndexState(config.caches / INDEX_STATE)
    stats = IndexStats()
    try:
        model = face_model or _PackModel.open(state, config)
        _check_model(state, model.identity, config)
        if config.ml_purge:
            _purge(state, targets, config.caches / FACE_CACHE, model.identity, clip)
        run = _Run(config, state, model, clip, stats)
        try:
            run.run(targets, progress)
        except BaseException:
            run.abandon()
            raise
    except sqlite3.DatabaseError as exc:
        raise state.damaged(exc) from None
    finally:
        state.close()
        if clip is not None:
            clip.store.close()
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


class _PackModel:
    """The configured model pack; the engine is built when the first image needs it. A missing pack is only an
    error then: a caches folder that already records its model can be re-indexed (every file known) without
    the pack at hand."""

    reads_pixels = True

    def __init__(self, config: IndexConfig, pack: ModelPack | None, identity: PackIdentity) -> None:
        self.config = config
        self.pack = pack
        self.identity = identity
        self._engine = Lazy(self._make_engine)

    @classmethod
    def open(cls, state: IndexState, config: IndexConfig) -> _PackModel:
        try:
            pack = resolve_pack(config.model_dir, config.model_pack)
        except ModelPackError:
            recorded = state.get_meta("face_model")
            if recorded is None:
                raise
            return cls(config, None, PackIdentity.from_dict(orjson.loads(recorded)))
        return cls(config, pack, pack.identity())

    def engine(self) -> FaceEngine:
        return self._engine.get()

    def _make_engine(self) -> FaceEngine:
        from ..models.faces import build_engine

        if self.pack is None:
            self.pack = resolve_pack(self.config.model_dir, self.config.model_pack)
            _require_model(self.identity, self.pack.identity(), self.config.caches)
        return build_engine(self.pack, runtime_options(self.config.providers))


def _check_model(state: IndexState, identity: PackIdentity, config: IndexConfig) -> None:
    recorded = state.get_meta("face_model")
    if recorded is None:
        state.set_meta("face_model", orjson.dumps(identity.to_dict()).decode())
        return
    _require_model(PackIdentity.from_dict(orjson.loads(recorded)), identity, config.caches)


def _require_model(previous: PackIdentity, identity: PackIdentity, caches: Path) -> None:
    if not previous.same_recognizer(identity):
        raise ConfigError(
            f"{caches} was indexed with model pack {previous.describe()}, not {identity.describe()}: "
            "embedding spaces never mix. Use another --caches folder for this model pack."
        )


def _purge(
    state: IndexState, targets: Sequence[Path], cache: Path, identity: PackIdentity, clip: _ClipParts | None
) -> None:
    from ..artifacts.cacheops import purge_images

    state.begin()
    hashes: set[str] = set()
    for target in targets:
        hashes |= state.purge(str(target))
    purge_images(cache, hashes, identity)
    if clip is not None:
        clip.store.delete(hashes)
    state.commit()
    log.info("--ml-purge: forgot %d images under %s", len(hashes), ", ".join(map(str, targets)))


@dataclass
class _ClipParts:
    """The CLIP model folder, its identity and its vector store; the session is made on first use."""

    folder: Path
    identity: ClipIdentity
    store: ClipStore

    @classmethod
    def open(cls, config: IndexConfig) -> _ClipParts:
        folder = resolve_clip(config.clip_dir, config.clip_model, hint=SKIP_HINT)
        identity = clip_identity(folder)
        return cls(folder, identity, ClipStore(config.caches / CLIP_STORE, identity))


class _Run:
    def __init__(
        self,
        config: IndexConfig,
        state: IndexState,
        model: FaceModel,
        clip: _ClipParts | None,
        stats: IndexStats,
    ) -> None:
        self.config = config
        self.state = state
        self.model = model
        self.ml = model.reads_pixels
        self.clip = clip
        self.stats = stats
        self._clip_visual = Lazy(self._make_clip_visual)
        self._writer: CacheWriter | None = None
        self.galleries = _Galleries()
        self.claims = Claims(known=state.has_image)
        self.clip_claims = None if clip is None else Claims(known=clip.store.has)
        self.unflushed = 0
        self.skipped: set[tuple[str, str]] = set()
        self.buffers = Buffers(keep=0)
        # State rows of recorded files, written with executemany at each flush (a statement per file would
        # hand the GIL to the worker threads thousands of times).
        self.image_rows: list[tuple[str, int, str, int, str | None]] = []
        self.link_rows: list[tuple[int, str, str | None, int]] = []
        self.completed: list[tuple[int, Gallery]] = []
        self.retry_galleries: set[int] = set()  # galleries with a transient failure: their stats are not stored

    def skip(self, path: str, reason: str) -> None:
        if (path, reason) in self.skipped:  # the second pass lists a gallery again
            return
        self.skipped.add((path, reason))
        self.stats.walk_skips += 1
        count_reason(self.stats.skip_reasons, reason)
        log.warning("skipping %s: %s", path, reason)

    # -- planning: walk, stat, layers 1-3 ------------------------------------------------------------

    def plan(self, targets: Sequence[Path]) -> tuple[list[Path], int]:
        """First pass: the galleries that need work and how many files they will read (for the ETA)."""
        todo, reads = [], 0
        for folder in gallery_folders(targets, self.skip):
            count, total = gallery_totals(folder, self.skip)
            self.stats.galleries_seen += 1
            self.stats.files_stated += count
            row = self.state.gallery(str(folder))
            unchanged = row is not None and (row.file_count, row.total_bytes) == (count, total)
            if unchanged and self._clip_complete(row) and not self.config.reindex:
                self.stats.galleries_skipped += 1
                continue
            gallery = list_gallery(folder, self.skip, with_metadata=False)
            known = self.state.known_files(row.id) if row else {}
            reads += sum(1 for name, size in gallery.files.items() if self._must_read(known.get(name), size))
            todo.append(folder)
        return todo, reads

    def items(self, folders: list[Path]) -> Iterator[WorkItem]:
        """Second pass over the galleries that need work: list again, apply layers 2 and 3, yield the reads."""
        for folder in folders:
            gallery = list_gallery(folder, self.skip)
            self.state.begin()
            gallery_id = self.state.ensure_gallery(str(folder))
            known = self.state.known_files(gallery_id)
            removed = [name for name in known if name not in gallery.files]
            self.state.unlink(gallery_id, removed)
            self.stats.files_removed += len(removed)
            reads = sorted(
                (name, size) for name, size in gallery.files.items() if self._must_read(known.get(name), size)
            )
            self.stats.files_skipped_by_size += gallery.file_count - len(reads)
            self.galleries.open(gallery_id, gallery, len(reads))
            self._complete(gallery_id, self.galleries.close_if_done(gallery_id))
            for name, size in reads:
                yield WorkItem(gallery_id, str(folder), name, size)

    def _must_read(self, known: KnownFile | None, size: int) -> bool:
        """Layer 3, unless --reindex: a known, successfully hashed file of the same size is not read again
        (unless it still lacks a vector of the current CLIP model)."""
        if self.config.reindex or known is None or known.image_hash is None or known.file_size != size:
            return True
        return self.clip is not None and not self.clip.store.has(known.image_hash)

    def _clip_complete(self, row: GalleryRow | None) -> bool:
        """Whether a gallery's last complete index gave every image a vector of the current CLIP model."""
        return self.clip is None or (row is not None and row.clip_model == self.clip.identity.visual_blake3)

    # -- lazily created heavy parts ------------------------------------------------------------------

    def writer(self) -> CacheWriter:
        if self._writer is None:
            from ..artifacts.cache import CacheWriter

            self._writer = CacheWriter(self.config.caches / FACE_CACHE, self.model.identity)
        return self._writer

    def clip_visual(self) -> ClipVisual:
        return self._clip_visual.get()

    def _make_clip_visual(self) -> ClipVisual:
        from ..models.clipvisual import ClipVisual

        assert self.clip is not None
        return ClipVisual(self.clip.folder, runtime_options(self.config.providers))

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.abandon()

    # -- io and inference stages ---------------------------------------------------------------------

    def load(self, item: WorkItem) -> tuple[Done, Read]:
        read = read_and_claim(os.path.join(item.gallery, item.filename), self.claims, self.config.max_bytes)
        if read.error:
            return Done(item, error=read.error), read
        need_clip = self.clip_claims is not None and self.clip_claims.claim(read.digest)
        done = Done(item, read.digest, deduped=not read.new, need_clip=need_clip, size=len(read.data))
        if (done.deduped and not need_clip) or not self.ml:
            return done, read
        decode_into(read, self.claims, self.config.max_pixels, buffers=self.buffers)
        if read.image is None:
            done.error, done.transient = read.error, read.transient
        else:
            done.width, done.height = read.image.width, read.image.height
        return done, read

    def infer(self, loaded: tuple[Done, Read]) -> Done:
        done, read = loaded
        if read.image is None or not self.ml:
            return done
        image = read.image
        try:
            if not done.deduped:  # no pack: the run ends
                faces = analyze(self.model.engine(), image, read.data, self.config.max_pixels, self.buffers)
                done.faces, done.error, done.transient = faces.value or [], faces.error, faces.transient
            if done.need_clip and not done.error:
                vector = attempt(lambda: self.clip_visual().embed([image])[0])
                done.clip_vector, done.error, done.transient = vector.value, vector.error, vector.transient
        finally:
            self.buffers.give(image.buffer)
        return done

    # -- recording -----------------------------------------------------------------------------------

    def record(self, done: Done) -> None:
        item, stats = done.item, self.stats
        path = os.path.join(item.gallery, item.filename)
        size = done.size if done.size >= 0 else item.size
        stats.files_read += 1
        if done.transient:  # nothing recorded: the file and its gallery are read again next run
            stats.files_failed += 1
            log.warning("skipping %s: %s", path, done.error)
            self.retry_galleries.add(item.gallery_id)
            self.claims.release(done.content_hash)
            self._complete(item.gallery_id, self.galleries.finish_one(item.gallery_id))
            return
        if done.error:
            stats.files_failed += 1
            log.warning("skipping %s: %s", path, done.error)
        elif done.deduped:
            stats.files_deduped += 1
        else:
            stats.files_embedded += 1
            stats.faces_found += len(done.faces)
        if done.clip_vector is not None and self.clip is not None:
            self.clip.store.add(done.content_hash, done.clip_vector)
            stats.clip_embedded += 1
            self.unflushed += 1
        if done.content_hash and not done.deduped:
            status = ImageStatus.ERROR if done.error else ImageStatus.OK if done.faces else ImageStatus.NO_FACE
            self.image_rows.append((done.content_hash, size, status.value, len(done.faces), done.error or None))
            source = Source(SourceKind.GALLERY, gallery=item.gallery)
            record = ImageRecord(
                path, done.content_hash, size, status, done.error, done.width, done.height, len(done.faces), source
            )
            self.writer().add(record, done.faces)
            self.unflushed += 1
        self.link_rows.append((item.gallery_id, item.filename, done.content_hash or None, size))
        self._complete(item.gallery_id, self.galleries.finish_one(item.gallery_id))
        if self.unflushed >= self.config.flush_every or len(self.link_rows) >= 10 * self.config.flush_every:
            self.flush()

    def _complete(self, gallery_id: int, gallery: Gallery | None) -> None:
        """Store a gallery's count and bytes once all its reads are recorded (layer 1 for the next run); not for a
        gallery with a file to retry."""
        if gallery is not None and gallery_id not in self.retry_galleries:
            self.completed.append((gallery_id, gallery))

    def flush(self) -> None:
        """Cache first, then state: the state never claims images the cache has not stored."""
        if self._writer is not None:
            self._writer.flush()
        if self.clip is not None:
            self.clip.store.commit()
        self.state.add_images(self.image_rows)
        self.state.link_many(self.link_rows)
        clip_model = self.clip.identity.visual_blake3 if self.clip is not None else None
        for gallery_id, gallery in self.completed:
            self.state.set_gallery_stats(
                gallery_id, gallery.file_count, gallery.total_bytes, gallery.metadata, time.time(), clip_model
            )
        self.state.commit()
        self.image_rows, self.link_rows, self.completed = [], [], []
        self.unflushed = 0

    # -- the run -------------------------------------------------------------------------------------

    def run(self, targets: Sequence[Path], progress: ProgressFactory | None) -> None:
        folders, reads = self.plan(targets)
        bar = progress(reads) if folders and progress else None
        workers = max(1, self.config.concurrency)
        io_workers = self.config.io_concurrency or 2 * workers
        self.buffers = Buffers(keep=workers)  # as in an embed run
        for done in run_stages(self.items(folders), self.load, self.infer, workers, io_workers):
            self.record(done)
            if bar:
                bar.advance()
        self.flush()
        if self._writer is not None:
            self._writer.close(compact=None)
        if bar:
            bar.close()
