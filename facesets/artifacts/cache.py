"""Face caches: one NPZ file (schema 2) plus a journal that makes every flush crash-safe.

File members (all loadable with ``allow_pickle=False``):

    schema        int64 scalar, 2
    model         UTF-8 JSON: the model pack identity (name, files, BLAKE3 of each)
    embeddings    float32 (N, 512), L2-normalised, row i is face i
    meta          structured (N,): image (int32 index into processed), bbox (4 f4), kps (5x2 f4),
                  score (f4), face_short (f4, short side of the box in original pixels), norm (f4, the
                  recognizer's raw embedding norm), sharpness (f4, variance of the aligned crop's Laplacian);
                  caches written before norm and sharpness existed read with NaN there (quality unknown)
    processed     UTF-8 JSON list: every image done, with path, content hash (BLAKE3), size, status
                  (ok | no_face | duplicate | error), reason, width, height, faces, source ids
    path_aliases  UTF-8 JSON list of [linux path, windows path] pairs
    journal_seq   int64 scalar: the last journal segment folded into this file

While a run is in progress, each flush writes a small segment ``<cache>.journal/seg-NNNNNN.npz`` (same
members) atomically; at the end of the run the segments are folded into the main file, atomically,
and removed. A ``kill -9`` therefore loses at most the images since the last flush, and the next run (or
any reader) folds the surviving segments in. A file that is not a readable cache is refused, never
overwritten.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from numpy.typing import NDArray

from ..base.errors import CacheCorruptError, CacheError, CacheModelMismatchError, CacheVersionError
from ..base.fsio import atomic_writer, exclusive_lock, remove_stale_temps, temp_pattern
from ..models.packs import PackIdentity
from .layout import journal_of, lock_of
from .records import ImageRecord, ImageStatus

SCHEMA = 2
EMBEDDING_DIM = 512
_FIRST_META = [("image", "<i4"), ("bbox", "<f4", (4,)), ("kps", "<f4", (5, 2)), ("score", "<f4"), ("face_short", "<f4")]
FIRST_META_DTYPE = np.dtype(_FIRST_META)  # before the quality fields: still read
META_DTYPE = np.dtype([*_FIRST_META, ("norm", "<f4"), ("sharpness", "<f4")])
REQUIRED = ("schema", "model", "embeddings", "meta", "processed", "path_aliases")


@dataclass
class CacheData:
    """A cache in memory: image records, face rows and aliases."""

    identity: PackIdentity
    images: list[ImageRecord] = field(default_factory=list)
    meta: NDArray[Any] = field(default_factory=lambda: np.zeros(0, META_DTYPE))
    embeddings: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))
    aliases: dict[str, str] = field(default_factory=dict)
    journal_seq: int = 0

    @property
    def face_count(self) -> int:
        return len(self.meta)

    def extend(self, others: Sequence[CacheData]) -> None:
        """Append the records of ``others`` in order (indices shifted), copying the arrays once."""
        metas, vectors = [self.meta], [self.embeddings]
        for other in others:
            shifted = other.meta.copy()
            shifted["image"] += len(self.images)
            self.images.extend(other.images)
            metas.append(shifted)
            vectors.append(other.embeddings)
            self.aliases.update(other.aliases)
        self.meta = np.concatenate(metas)
        self.embeddings = np.concatenate(vectors).astype(np.float32, copy=False)

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in ImageStatus}
        for record in self.images:
            counts[record.status.value] += 1
        return counts


class FaceLike(Protocol):
    """What the cache stores of a face (:class:`facesets.models.faces.Face` is one)."""

    @property
    def bbox(self) -> NDArray[np.float32]: ...
    @property
    def kps(self) -> NDArray[np.float32]: ...
    @property
    def score(self) -> float: ...
    @property
    def face_short(self) -> float: ...
    @property
    def embedding(self) -> NDArray[np.float32]: ...
    @property
    def norm(self) -> float: ...
    @property
    def sharpness(self) -> float: ...


def faces_to_arrays(image_index: int, faces: Sequence[FaceLike]) -> tuple[NDArray[Any], NDArray[np.float32]]:
    """Rows for the faces of one image (``faces`` are :class:`facesets.models.faces.Face`)."""
    meta = np.zeros(len(faces), META_DTYPE)
    vectors = np.zeros((len(faces), EMBEDDING_DIM), np.float32)
    for row, face in enumerate(faces):
        meta[row] = (image_index, face.bbox, face.kps, face.score, face.face_short, face.norm, face.sharpness)
        vectors[row] = face.embedding
    return meta, vectors


# -- reading -------------------------------------------------------------------------------------------


def read_npz(path: Path, images_only: bool = False, header_only: bool = False) -> CacheData:
    """Read one cache or journal file, validating it; raise a :class:`CacheError` subclass if unusable.

    Members load lazily: ``images_only`` skips the face rows, ``header_only`` reads just schema, model and
    journal position (cheap on a cache of millions of images).
    """
    try:
        with open(path, "rb") as handle:
            _require_archive(path, handle.read(4))
            handle.seek(0)
            npz_file = np.load(handle, allow_pickle=False)
            if not isinstance(npz_file, np.lib.npyio.NpzFile):
                raise CacheCorruptError(f"{path} is not a face cache: it is a single NumPy array, not an .npz archive")
            with npz_file as npz:
                try:
                    data = _parse_members(path, npz, images_only or header_only, header_only)
                except (ValueError, orjson.JSONDecodeError) as exc:
                    if _holds_objects(npz):
                        raise CacheCorruptError(_corrupt(path, _PICKLED)) from exc
                    raise
    except CacheError:
        raise
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise CacheCorruptError(_corrupt(path, str(exc) or type(exc).__name__)) from exc
    if not images_only:
        _check_shapes(path, data)
    return data


_PICKLED = (
    "it holds pickled objects (a cache of the original face-sets tool?); facesets never unpickles files. "
    "Re-embed the images with `facesets embed`"
)


def _parse_members(path: Path, npz: Any, images_only: bool, header_only: bool = False) -> CacheData:
    missing = [name for name in REQUIRED if name not in npz.files]
    if missing:
        raise CacheCorruptError(_corrupt(path, f"members missing: {', '.join(missing)}"))
    schema = int(npz["schema"])
    if schema != SCHEMA:
        raise CacheVersionError(_version_message(path, schema))
    data = CacheData(
        identity=PackIdentity.from_dict(orjson.loads(npz["model"].tobytes())),
        journal_seq=int(npz["journal_seq"]) if "journal_seq" in npz.files else 0,
    )
    if header_only:
        return data
    processed, aliases = npz["processed"].tobytes(), npz["path_aliases"].tobytes()
    with ThreadPoolExecutor(max_workers=1) as reader:
        # the face rows are read (file reads and CRC checks, which release the GIL) while the image records
        # are parsed; only that thread touches the file from here on
        faces = None if images_only else reader.submit(_read_faces, npz)
        data.images = [ImageRecord.from_dict(item) for item in orjson.loads(processed)]
        data.aliases = {str(a): str(b) for a, b in orjson.loads(aliases)}
        if faces is not None:
            data.meta, data.embeddings = faces.result()
    return data


def _read_faces(npz: Any) -> tuple[NDArray[np.void], NDArray[np.float32]]:
    return upgrade_meta(np.asarray(npz["meta"])), np.asarray(npz["embeddings"], dtype=np.float32)


def upgrade_meta(meta: NDArray[Any]) -> NDArray[Any]:
    """Face rows of a cache written before the quality fields, with NaN (unknown) there; others as they are."""
    if meta.dtype != FIRST_META_DTYPE:
        return meta
    upgraded = np.zeros(len(meta), META_DTYPE)
    for name in FIRST_META_DTYPE.names or ():
        upgraded[name] = meta[name]
    upgraded["norm"] = upgraded["sharpness"] = np.nan
    return upgraded


def _verify_members(path: Path) -> None:
    """Every member's CRC, streamed (memory stays small): a damaged cache is refused before anything is added."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        raise CacheCorruptError(_corrupt(path, str(exc) or type(exc).__name__)) from exc
    if bad is not None:
        raise CacheCorruptError(_corrupt(path, f"member {bad} is damaged (bad CRC)"))


def _holds_objects(npz: Any) -> bool:
    for name in npz.files:
        try:
            npz[name]
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                return True
    return False


def _check_shapes(path: Path, data: CacheData) -> None:
    if data.meta.dtype != META_DTYPE:
        raise CacheCorruptError(_corrupt(path, f"meta has dtype {data.meta.dtype}"))
    if data.embeddings.ndim != 2 or len(data.embeddings) != len(data.meta):
        raise CacheCorruptError(_corrupt(path, "embeddings and meta have different lengths"))
    if len(data.meta) and (int(data.meta["image"].max()) >= len(data.images) or int(data.meta["image"].min()) < 0):
        raise CacheCorruptError(_corrupt(path, "a face points at an image that is not recorded"))


def _corrupt(path: Path, why: str) -> str:
    return f"{path} is not a readable facesets cache ({why}). It was left untouched: move it away or use another file."


def _require_archive(path: Path, start: bytes) -> None:
    """A face cache is a zip archive (.npz): say what the file is instead when it is not one."""
    if start[:2] == b"PK":
        return
    if not start:
        what = "it is empty"
    elif start[:1] in (b"{", b"["):
        what = "it is a JSON file (a queue? `facesets queue info` reads queues)"
    else:
        what = "it is not an .npz archive"
    raise CacheCorruptError(f"{path} is not a face cache: {what}. It was left untouched.")


def _version_message(path: Path, schema: int) -> str:
    if schema > SCHEMA:
        return f"{path} has cache schema {schema}, newer than this facesets reads ({SCHEMA}): upgrade facesets."
    return f"{path} has cache schema {schema}, older than this facesets reads ({SCHEMA}): re-embed its images."


def journal_dir(cache: Path) -> Path:
    return journal_of(cache)


def journal_segments(cache: Path) -> list[tuple[int, Path]]:
    folder = journal_dir(cache)
    if not folder.is_dir():
        return []
    segments = []
    for entry in folder.glob("seg-*.npz"):
        with contextlib.suppress(ValueError):
            segments.append((int(entry.stem[4:]), entry))
    return sorted(segments)


def load_cache(path: Path, images_only: bool = False) -> CacheData:
    """Read a cache with its pending journal segments folded in (read-only: nothing is written)."""
    path = Path(path)
    base = read_npz(path, images_only) if path.exists() else None
    data = fold_journal(path, base, images_only)
    if data is None:
        raise CacheError(
            f"cache {path} does not exist: `facesets embed --queue queue.json --cache {path}` makes it from a queue "
            "(`facesets queue add`), `facesets index` from galleries"
        )
    if base is None or data.journal_seq != base.journal_seq:
        data = sorted_by_path(data)
    return data


def fold_journal(path: Path, base: CacheData | None, images_only: bool = False) -> CacheData | None:
    """``base`` with the journal segments it has not folded in yet appended, in order."""
    seq = base.journal_seq if base else 0
    parts = [
        (number, segment, read_npz(segment, images_only)) for number, segment in journal_segments(path) if number > seq
    ]
    if not parts:
        return base
    data = base if base is not None else CacheData(identity=parts[0][2].identity)
    for _, segment, part in parts:
        require_same_model(data.identity, part.identity, segment)
    data.extend([part for _, _, part in parts])
    data.journal_seq = parts[-1][0]
    return data


def require_same_model(expected: PackIdentity, found: PackIdentity, where: Path) -> None:
    if not expected.same_recognizer(found):
        raise CacheModelMismatchError(
            f"{where} was made with model pack {found.describe()}, but this run uses {expected.describe()}: "
            "embeddings of different recognizers never mix. Use a separate cache for each recognizer."
        )


# -- writing -------------------------------------------------------------------------------------------


def _json_array(value: Any) -> NDArray[np.uint8]:
    return np.frombuffer(orjson.dumps(value), dtype=np.uint8)


def write_npz(path: Path, data: CacheData) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    members = {
        "schema": np.int64(SCHEMA),
        "model": _json_array(data.identity.to_dict()),
        "embeddings": np.ascontiguousarray(data.embeddings, dtype=np.float32),
        "meta": data.meta,
        "processed": _json_array([record.to_dict() for record in data.images]),
        "path_aliases": _json_array(sorted(data.aliases.items())),
        "journal_seq": np.int64(data.journal_seq),
    }
    buffer_threshold = 64 << 20
    with atomic_writer(path) as handle:
        if data.embeddings.nbytes < buffer_threshold:
            staging = io.BytesIO()
            np.savez(staging, **members)  # type: ignore[arg-type]
            handle.write(staging.getbuffer())
        else:
            np.savez(handle, **members)  # type: ignore[arg-type]


def sorted_by_path(data: CacheData) -> CacheData:
    """The canonical form: one record per path (a later record, such as a retried error, replaces an
    earlier one with its faces), images in path order, faces in image order."""
    latest = {record.path: index for index, record in enumerate(data.images)}
    order = [latest[path] for path in sorted(latest)]
    new_index = np.full(len(data.images), -1, np.int64)
    new_index[order] = np.arange(len(order))
    images = new_index[data.meta["image"]] if len(data.meta) else np.zeros(0, np.int64)
    rows = np.nonzero(images >= 0)[0]
    meta = data.meta[rows].copy()
    meta["image"] = images[rows]
    face_order = rows[np.argsort(meta["image"], kind="stable")]
    meta = meta[np.argsort(meta["image"], kind="stable")]
    return CacheData(
        identity=data.identity,
        images=[data.images[i] for i in order],
        meta=meta,
        embeddings=data.embeddings[face_order],
        aliases=dict(data.aliases),
        journal_seq=data.journal_seq,
    )


class CacheWriter:
    """Appends records to a cache through its journal; :meth:`close` folds the journal in.

    Holds an exclusive lock on ``<cache>.lock`` for its lifetime, so two runs never write one cache.
    """

    def __init__(self, path: Path, identity: PackIdentity) -> None:
        self.path = Path(path)
        self.identity = identity
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # "created or resumed"
        except OSError as exc:
            raise CacheError(f"cannot create the folder of {self.path}: {exc.strerror or exc}") from exc
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(exclusive_lock(lock_of(self.path)))
        try:
            self._open()
        except BaseException:
            self._lock.close()
            raise

    def _open(self) -> None:
        remove_stale_temps(self.path.parent, temp_pattern(self.path.name))
        header = read_npz(self.path, header_only=True) if self.path.exists() else None
        if header is not None:
            _verify_members(self.path)
        self._drop_segments(header.journal_seq if header else 0)
        self._seq = header.journal_seq if header else 0
        if header is not None:
            require_same_model(self.identity, header.identity, self.path)
        for number, segment in journal_segments(self.path):
            self._seq = max(self._seq, number)
            require_same_model(self.identity, read_npz(segment, header_only=True).identity, segment)
        self._existing: CacheData | None = None
        self._pending = CacheData(identity=self.identity)

    def _drop_segments(self, upto: int) -> None:
        """Remove segments already folded into the main file (left by a kill during :meth:`close`)."""
        for number, segment in journal_segments(self.path):
            if number <= upto:
                segment.unlink(missing_ok=True)
        folder = journal_dir(self.path)
        if folder.is_dir():
            remove_stale_temps(folder, temp_pattern("seg-*"))

    def done_images(self) -> Iterable[ImageRecord]:
        """The image records already in the cache and its journal (read on first use)."""
        if self._existing is None and (self.path.exists() or journal_segments(self.path)):
            self._existing = load_cache(self.path, images_only=True)
        return self._existing.images if self._existing else []

    def add(self, record: ImageRecord, faces: Sequence[FaceLike], aliases: dict[str, str] | None = None) -> None:
        meta, vectors = faces_to_arrays(0, faces)
        self.add_rows(record, meta, vectors, aliases)

    def add_rows(
        self,
        record: ImageRecord,
        meta: NDArray[Any] | None,
        vectors: NDArray[np.float32],
        aliases: dict[str, str] | None = None,
    ) -> None:
        """Add one image with its face rows (``meta`` of :data:`META_DTYPE`, any image index; None: no faces)."""
        index = len(self._pending.images)
        self._pending.images.append(record)
        if meta is not None and len(meta):
            meta = meta.copy()
            meta["image"] = index
            self._pending.meta = np.concatenate([self._pending.meta, meta])
            self._pending.embeddings = np.concatenate([self._pending.embeddings, vectors])
        if aliases:
            self._pending.aliases.update(aliases)

    @property
    def pending_images(self) -> int:
        return len(self._pending.images)

    def flush(self) -> None:
        """Write the records added since the last flush as one journal segment (atomic)."""
        if not self._pending.images:
            return
        try:
            folder = journal_dir(self.path)
            folder.mkdir(exist_ok=True)
            write_npz(folder / f"seg-{self._seq + 1:06d}.npz", self._pending)
        except OSError as exc:
            raise CacheError(
                f"cannot write to the journal of {self.path}: {exc.strerror or exc}. Everything flushed before "
                "is intact: free space and run the same command again to continue."
            ) from exc
        self._seq += 1
        self._pending = CacheData(identity=self.identity)

    def close(self, compact: bool | None = True) -> None:
        """Flush, fold the journal into the main file atomically, remove the segments, release the lock.

        ``compact=None`` folds only a journal grown past a quarter of the main file (or 256 segments), so
        a run that adds a few images to a big cache does not rewrite it; readers fold segments in anyway.
        A run that added nothing leaves the cache file untouched (and unread)."""
        try:
            self.flush()
            segments = journal_segments(self.path)
            if self.path.exists() and not segments:
                return
            if compact is None and not _journal_is_large(self.path, segments):
                return
            merged = load_cache(self.path) if journal_segments(self.path) else CacheData(self.identity)
            try:
                write_npz(self.path, sorted_by_path(merged))
            except OSError as exc:
                raise CacheError(
                    f"cannot write cache {self.path}: {exc.strerror or exc}. The previous cache and the journal "
                    "of this run are intact: free space and run the same command again."
                ) from exc
            self._drop_segments(merged.journal_seq)
            with contextlib.suppress(OSError):
                journal_dir(self.path).rmdir()
        finally:
            self._lock.close()

    def abandon(self) -> None:
        """Keep what was flushed, drop the unflushed rest, release the lock (used on errors)."""
        self._lock.close()


def _journal_is_large(path: Path, segments: list[tuple[int, Path]]) -> bool:
    if not path.exists() or len(segments) >= 256:
        return True
    journal_bytes = sum(segment.stat().st_size for _, segment in segments)
    return journal_bytes * 4 >= path.stat().st_size
