"""``facesets load``: the file-based results into PostgreSQL, at the end of the pipeline.

What is loaded: face caches (images, image paths, Immich asset ids, face detections with their embeddings),
the gallery index state (galleries with their count and bytes, gallery images), the CLIP store (one model's
vectors) and the face sets of ``facesets_swap_ready/`` (each mapped to a person, :mod:`facesets.store.loadsets`).

Each batch goes through temporary tables filled by binary COPY and is inserted with ``ON CONFLICT`` in one
transaction, so loading the same files twice changes nothing, a newer cache adds only what is new, and a killed
load leaves no partial batch. Loads take an advisory lock, so two at once run one after the other. Every
embedding space is recorded in the ``models`` table per purpose (``face``, ``clip``); vectors of another model
are refused with a message.

HNSW indexes make each inserted vector cost about 3 ms here, so a load into an empty table drops the index and
builds it once at the end (about 20 times faster in all). Every load ends by creating any missing index, so a
load killed in between leaves the next load (or search) to rebuild it.

A face cache loaded into an empty store (no photos, faces or image paths) is a *bulk load*, done as PostgreSQL's
"Populating a Database" advises: the foreign keys of faces and image paths, the faces' unique key and the
paths-by-image index are left out while the rows go in, and added back once at the end (one validation pass and
one sorted index build instead of a lookup and an index insert per row); photos, paths and faces are copied
straight into their tables. The cache's photos, paths and faces are deduplicated up front and each batch holds
the photo rows its faces and paths point at, so the constraints hold throughout; adding them back checks it.
A bulk load that is killed leaves them out; every load starts by adding back whatever is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..artifacts.cache import EMBEDDING_DIM, CacheData, load_cache
from ..artifacts.clipstore import stored_models, stored_vectors
from ..artifacts.indexstate import exported_galleries
from ..artifacts.layout import CLIP_STORE, FACE_CACHE, INDEX_STATE
from ..artifacts.records import SourceKind
from ..base.errors import DatabaseError
from ..base.progress import Progress, ProgressFactory
from .copy import face_rows
from .database import DatabaseConfig, connect, copy_rows, copy_to_temp, database_url, with_vectors
from .loadsets import load_face_sets
from .migrations import check_schema

CLIP_DIM = 512
LOAD_LOCK = 0x6C6F6164  # "load"
# (table, constraint, definition): left out during a bulk load, added back at its end
BULK_CONSTRAINTS = (
    ("face_detections", "face_detections_image_id_model_box_key", "UNIQUE (image_id, model, box)"),
    ("face_detections", "face_detections_image_id_fkey", "FOREIGN KEY (image_id) REFERENCES images(id)"),
    ("image_paths", "image_paths_image_id_fkey", "FOREIGN KEY (image_id) REFERENCES images(id)"),
)
BULK_INDEXES = {"image_paths_by_image": ("image_paths", "CREATE INDEX image_paths_by_image ON image_paths(image_id)")}
VECTOR_INDEXES = {
    "face_detections": "CREATE INDEX IF NOT EXISTS face_detections_embedding ON face_detections "
    "USING hnsw (embedding vector_cosine_ops)",
    "clip_embeddings": "CREATE INDEX IF NOT EXISTS clip_embeddings_embedding ON clip_embeddings "
    "USING hnsw (embedding vector_cosine_ops)",
}


@dataclass(frozen=True)
class LoadConfig:
    database: DatabaseConfig
    caches: Path = Path("caches")
    extra_caches: tuple[Path, ...] = ()
    clip_model: str | None = None
    batch: int = 5_000
    sets: Path | None = None  # facesets_swap_ready/: each canonical set maps to a person
    workers: int = 2  # connections writing face batches at once
    galleries_only: bool = False  # the gallery index state alone (backfill: sizes and gallery stats)


@dataclass
class LoadStats:
    images_added: int = 0
    paths_added: int = 0
    immich_assets_added: int = 0
    faces_added: int = 0
    faces_seen: int = 0
    galleries_loaded: int = 0
    gallery_images_loaded: int = 0
    clip_added: int = 0
    face_sets_loaded: int = 0
    face_set_faces_assigned: int = 0
    face_set_persons_created: int = 0
    indexes_rebuilt: int = 0
    index_seconds: float = 0.0
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def add_batch(self, batch: _BatchCounts) -> None:
        self.images_added += batch.images
        self.paths_added += batch.paths
        self.immich_assets_added += batch.immich_assets
        self.faces_added += batch.faces


@dataclass(frozen=True)
class _BatchCounts:
    """The rows one batch added (zero for a batch that did not run)."""

    images: int = 0
    paths: int = 0
    immich_assets: int = 0
    faces: int = 0


def run_load(config: LoadConfig, progress: ProgressFactory | None = None) -> LoadStats:
    """Load what ``config`` names (see the module docstring); ``progress(total)`` makes a bar per face cache."""
    started = time.monotonic()
    stats = LoadStats()
    state = config.caches / INDEX_STATE
    caches, clip, sets = [], None, None
    if not config.galleries_only:
        caches = [path for path in [config.caches / FACE_CACHE] if path.exists()] + list(config.extra_caches)
        clip = config.caches / CLIP_STORE if (config.caches / CLIP_STORE).exists() else None
        sets = config.sets if config.sets is not None and config.sets.is_dir() else None
    if not caches and not state.exists() and clip is None and sets is None:
        raise DatabaseError(
            f"nothing to load: no {FACE_CACHE}, {INDEX_STATE} or {CLIP_STORE} in {config.caches}, no --cache and "
            "no face-set folder"
        )
    with database_url(config.database) as url, connect(url) as conn:
        check_schema(conn)
        with_vectors(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (LOAD_LOCK,))
        try:
            restore_bulk_constraints(url, conn)
            _drop_indexes_of_empty_tables(conn)
            for path in caches:
                _load_face_cache(url, conn, load_cache(path), config, stats, progress)
            if state.exists():
                _load_galleries(conn, state, config.batch, stats)
            if clip is not None:
                _load_clip(conn, clip, config.clip_model, config.batch, stats)
            if sets is not None:
                load_face_sets(conn, sets, stats)
            _create_missing_indexes(conn, stats)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOAD_LOCK,))
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


def _is_empty(conn: Any, table: str) -> bool:
    return bool(conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table})").fetchone()[0])


def _drop_indexes_of_empty_tables(conn: Any) -> None:
    for table in VECTOR_INDEXES:
        if _is_empty(conn, table):
            conn.execute(f"DROP INDEX IF EXISTS {table}_embedding")


def _start_bulk(conn: Any) -> bool:
    """Leave out the per-row checks of an empty store (see the module's text); False when it is not empty."""
    if not all(_is_empty(conn, table) for table in ("face_detections", "image_paths", "images")):
        return False
    with conn.transaction():
        for table, name, _ in BULK_CONSTRAINTS:
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
        for name in BULK_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
    return True


def restore_bulk_constraints(url: str, conn: Any) -> None:
    """Add back the constraints and indexes a bulk load left out (all, or those a killed one did not restore):
    each table's on its own connection, at once."""
    present = {
        row[0] for row in conn.execute("SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace")
    }
    work: dict[str, list[str]] = {}
    for table, name, definition in BULK_CONSTRAINTS:
        if name not in present:
            work.setdefault(table, []).append(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    present_indexes = _index_names(conn)
    for name, (table, statement) in BULK_INDEXES.items():
        if name not in present_indexes:
            work.setdefault(table, []).append(statement)
    if work:
        with ThreadPoolExecutor(max_workers=len(work)) as pool:
            for future in [pool.submit(_run_statements, url, statements) for statements in work.values()]:
                future.result()


def _run_statements(url: str, statements: list[str]) -> None:
    try:
        with connect(url) as conn:  # a transaction each: the foreign keys lock images only while they check
            conn.execute("SET maintenance_work_mem = '256MB'")
            for statement in statements:
                conn.execute(statement)
    except DatabaseError:
        raise
    except Exception as exc:  # psycopg's errors: a broken invariant of the loader, never expected
        raise DatabaseError(
            f"cannot add back the constraints of a bulk load ({exc}); the loaded rows are kept"
        ) from exc


def _index_names(conn: Any) -> set[str]:
    return {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}


def _create_missing_indexes(conn: Any, stats: LoadStats) -> None:
    started = time.monotonic()
    present = _index_names(conn)
    conn.execute("SET maintenance_work_mem = '512MB'")
    for table, statement in VECTOR_INDEXES.items():
        if f"{table}_embedding" not in present:
            conn.execute(statement)
            stats.indexes_rebuilt += 1
    stats.index_seconds = round(time.monotonic() - started, 3)


def claim_model(conn: Any, purpose: str, identity: dict[str, Any], key: tuple[str, ...], where: str) -> None:
    """Record the model of a purpose, or refuse vectors of a different one (compared on ``key`` fields)."""
    with conn.transaction():
        conn.execute("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE")
        row = conn.execute("SELECT identity FROM models WHERE purpose = %s", (purpose,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO models(purpose, identity) VALUES (%s, %s)", (purpose, orjson.dumps(identity).decode())
            )
            return
        held = row[0]
        if tuple(held.get(k) for k in key) != tuple(identity.get(k) for k in key):
            raise DatabaseError(
                f"{where} holds {purpose} vectors of {identity.get('name')}, but the database holds those of "
                f"{held.get('name')}: embedding spaces never mix. Load into another database, or re-embed with "
                f"{held.get('name')}."
            )


def _batches(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


def _load_face_cache(
    url: str,
    conn: Any,
    data: CacheData,
    config: LoadConfig,
    stats: LoadStats,
    progress: ProgressFactory | None = None,
) -> None:
    """The cache's batches, each in its own transaction, over ``config.workers`` connections at once (while
    one connection's server process writes, another batch is encoded or written)."""
    identity = data.identity.to_dict()
    claim_model(conn, "face", identity, ("detector_blake3", "recognizer_blake3"), "this cache")
    stats.faces_seen += len(data.meta)
    batches = list(_face_batches(data, config.batch))
    bulk = _start_bulk(conn)
    bar = progress(sum(len(batch.faces) for batch in batches)) if progress else None
    try:
        _write_batches(url, data, config, batches, bulk, stats, bar)
    except BaseException:
        if bulk:  # the batches written are kept: give them their constraints, without hiding the failure
            with contextlib.suppress(Exception):
                restore_bulk_constraints(url, conn)
        raise
    if bar:
        bar.close()
    if bulk:
        restore_bulk_constraints(url, conn)


def _write_batches(
    url: str,
    data: CacheData,
    config: LoadConfig,
    batches: list[_Batch],
    bulk: bool,
    stats: LoadStats,
    bar: Progress | None = None,
) -> None:
    connections: queue.Queue[Any] = queue.Queue()
    for _ in range(min(config.workers, len(batches))):
        connections.put(connect(url))
    try:
        with ThreadPoolExecutor(max_workers=max(1, connections.qsize())) as pool:
            failed = threading.Event()
            futures = {pool.submit(_load_batch, connections, failed, data, batch, bulk): batch for batch in batches}
            try:
                for future in as_completed(futures):
                    stats.add_batch(future.result())
                    if bar:
                        bar.advance(len(futures[future].faces))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        while not connections.empty():
            connections.get().close()


@dataclass(frozen=True)
class _Batch:
    """What one transaction writes. Every row goes with the first record of its photo, so a batch holds the photo
    rows its faces and paths point at, and batches written at once never write the same row."""

    images: NDArray[np.int64]  # records that show their photo first in the cache
    members: NDArray[np.int64]  # records whose photo's first record is one of those (Immich assets)
    paths: NDArray[np.int64]  # of the members, the record that names each path (its last one in the cache)
    faces: NDArray[np.int64]  # face rows; a face seen earlier (same photo hash and box, as copies have) left out


def _face_batches(data: CacheData, size: int) -> Iterator[_Batch]:
    first_of_hash: dict[str, int] = {}
    canonical = np.array(
        [first_of_hash.setdefault(record.content_hash, i) for i, record in enumerate(data.images)], np.int64
    )
    hashed = np.array([bool(record.content_hash) for record in data.images], bool)
    naming = np.zeros(len(data.images), bool)
    naming[list({record.path: i for i, record in enumerate(data.images)}.values())] = True
    keys = np.zeros(len(data.meta), [("image", "<i8"), ("bbox", "<f4", (4,))])
    if len(data.meta):
        keys["image"], keys["bbox"] = canonical[data.meta["image"]], data.meta["bbox"]
    _, first = np.unique(keys, return_index=True)
    faces = np.sort(first).astype(np.int64)
    face_home = keys["image"][faces]
    face_order, member_order = np.argsort(face_home, kind="stable"), np.argsort(canonical, kind="stable")
    for chunk in _batches(len(data.images), size):
        low, high = np.searchsorted(face_home[face_order], [chunk.start, chunk.stop])
        first_member, last_member = np.searchsorted(canonical[member_order], [chunk.start, chunk.stop])
        members = np.sort(member_order[first_member:last_member])
        members = members[hashed[members]]
        own = np.arange(chunk.start, chunk.stop, dtype=np.int64)
        yield _Batch(
            own[(canonical[own] == own) & hashed[own]], members, members[naming[members]], faces[face_order[low:high]]
        )


def _load_batch(
    connections: queue.Queue[Any], failed: threading.Event, data: CacheData, batch: _Batch, bulk: bool
) -> _BatchCounts:
    """One batch in one transaction; none starts after a batch failed (those in flight finish whole)."""
    if failed.is_set():
        return _BatchCounts()
    conn = connections.get()
    try:
        with conn.transaction():
            return _BatchCounts(
                images=_insert_images(conn, [data.images[i] for i in batch.images], bulk),
                paths=_insert_paths(conn, [data.images[i] for i in batch.paths], bulk),
                immich_assets=_insert_assets(conn, [data.images[i] for i in batch.members]),
                faces=_insert_faces(conn, data, batch.faces, data.identity.name, bulk),
            )
    except BaseException:
        failed.set()
        raise
    finally:
        connections.put(conn)


def _insert_images(conn: Any, records: Sequence[Any], bulk: bool) -> int:
    """The batch's photos (each once in the cache); during a bulk load straight into the empty table."""
    rows = [(r.content_hash, r.size, r.width or None, r.height or None) for r in records]
    if bulk:
        copy_rows(conn, "images(id, size, width, height)", rows)
        return len(rows)
    copy_to_temp(conn, "tmp_images", "id TEXT, size BIGINT, width INTEGER, height INTEGER", rows)
    return int(conn.execute("INSERT INTO images SELECT * FROM tmp_images ON CONFLICT (id) DO NOTHING").rowcount)


def _insert_paths(conn: Any, records: Sequence[Any], bulk: bool) -> int:
    """The batch's paths (each once in the cache); during a bulk load straight into the empty table."""
    rows = [(record.path, record.content_hash) for record in records]
    if bulk:
        copy_rows(conn, "image_paths(path, image_id)", rows)
        return len(rows)
    copy_to_temp(conn, "tmp_paths", "path TEXT, image_id TEXT", rows)
    return int(
        conn.execute(
            "INSERT INTO image_paths SELECT * FROM tmp_paths ON CONFLICT (path) DO UPDATE SET image_id = "
            "excluded.image_id WHERE image_paths.image_id IS DISTINCT FROM excluded.image_id"
        ).rowcount
    )


def _insert_assets(conn: Any, records: Sequence[Any]) -> int:
    """Immich assets of the batch (queue entries of ``facesets immich stage`` carry their ids)."""
    rows = [
        (
            r.source.asset_id,
            r.source.owner_id or None,
            r.source.checksum,
            r.content_hash,
            r.source.user or None,
        )
        for r in records
        if r.content_hash and r.source.kind == SourceKind.IMMICH and _is_uuid(r.source.asset_id)
    ]
    if not rows:
        return 0
    columns = "asset_id UUID, owner_id UUID, checksum TEXT, image_id TEXT, user_label TEXT"
    copy_to_temp(conn, "tmp_assets", columns, rows)
    return int(
        conn.execute(
            "INSERT INTO immich_assets(asset_id, owner_id, checksum, image_id, user_label) "
            "SELECT DISTINCT ON (asset_id) * FROM tmp_assets ORDER BY asset_id "
            "ON CONFLICT (asset_id) DO UPDATE SET image_id = excluded.image_id, checksum = excluded.checksum "
            "WHERE (immich_assets.image_id, immich_assets.checksum) IS DISTINCT FROM "
            "(excluded.image_id, excluded.checksum)"
        ).rowcount
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


FACE_COLUMNS = "image_id, box, keypoints, score, face_short, model, embedding, norm"


def _insert_faces(conn: Any, data: CacheData, rows: np.ndarray, model: str, bulk: bool) -> int:
    """Copy the faces of a batch straight into the table during a bulk load, or when none of its photos has faces
    there yet (the load lock keeps other loads out); otherwise through a temporary table, skipping known faces."""
    if len(rows) == 0:
        return 0
    meta = data.meta[rows]
    hashes = [data.images[int(i)].content_hash for i in meta["image"]]
    payload = face_rows(
        hashes,
        meta["bbox"],
        meta["kps"].reshape(len(rows), -1),
        meta["score"],
        meta["face_short"],
        model,
        data.embeddings[rows],
        meta["norm"],
    )
    known = (
        not bulk
        and conn.execute(
            "SELECT EXISTS (SELECT 1 FROM face_detections WHERE image_id = ANY(%s))", (sorted(set(hashes)),)
        ).fetchone()[0]
    )
    target = "tmp_faces" if known else f"face_detections({FACE_COLUMNS})"
    if known:
        conn.execute(
            "CREATE TEMP TABLE tmp_faces (image_id TEXT, box REAL[], keypoints REAL[], score REAL, face_short REAL, "
            f"model TEXT, embedding vector({EMBEDDING_DIM}), norm REAL) ON COMMIT DROP"
        )
    with conn.cursor().copy(f"COPY {target} FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.write(payload)
    if not known:
        return len(rows)
    return int(
        conn.execute(
            f"INSERT INTO face_detections({FACE_COLUMNS}) SELECT * FROM tmp_faces "
            "ON CONFLICT (image_id, model, box) DO NOTHING"
        ).rowcount
    )


def _load_galleries(conn: Any, state_path: Path, batch: int, stats: LoadStats) -> None:
    """``batch`` galleries per transaction, read from the state as they are written (memory stays flat)."""
    with contextlib.closing(exported_galleries(state_path)) as galleries:
        written = batch
        while written == batch:
            written = 0
            with conn.transaction():
                for gallery in itertools.islice(galleries, batch):
                    gallery_id = conn.execute(
                        "INSERT INTO galleries(path, file_count, total_bytes, metadata) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (path) DO UPDATE SET file_count = excluded.file_count, "
                        "total_bytes = excluded.total_bytes, metadata = excluded.metadata RETURNING id",
                        (gallery.path, gallery.file_count, gallery.total_bytes, gallery.metadata),
                    ).fetchone()[0]
                    stats.galleries_loaded += 1
                    stats.gallery_images_loaded += _insert_gallery_images(conn, gallery_id, gallery.files)
                    written += 1


def _insert_gallery_images(conn: Any, gallery_id: int, files: list[tuple[str, str, int | None]]) -> int:
    if not files:
        return 0
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS tmp_gallery_images (filename TEXT, image_id TEXT, "
        "file_size BIGINT) ON COMMIT DELETE ROWS"
    )
    copy_rows(conn, "tmp_gallery_images", files)
    result = conn.execute(
        "INSERT INTO gallery_images(gallery_id, filename, image_id, file_size) "
        "SELECT %s, t.filename, t.image_id, t.file_size FROM tmp_gallery_images t "
        "JOIN images i ON i.id = t.image_id "
        "ON CONFLICT (gallery_id, filename) DO UPDATE SET image_id = excluded.image_id, file_size = excluded.file_size "
        "WHERE (gallery_images.image_id, gallery_images.file_size) IS DISTINCT FROM (excluded.image_id, "
        "excluded.file_size)",
        (gallery_id,),
    )
    conn.execute("TRUNCATE tmp_gallery_images")
    return int(result.rowcount)


def _load_clip(conn: Any, store_path: Path, name: str | None, batch: int, stats: LoadStats) -> None:
    chosen = [model for model in stored_models(store_path) if name is None or model[1] == name]
    if not chosen:
        return
    if len(chosen) > 1:
        names = ", ".join(model[1] for model in chosen)
        raise DatabaseError(f"{store_path} holds vectors of several CLIP models ({names}): pass --clip-model NAME")
    model_id, model_name, visual = chosen[0]
    claim_model(conn, "clip", {"name": model_name, "visual_blake3": visual}, ("visual_blake3",), str(store_path))
    for block in stored_vectors(store_path, model_id, batch):
        with conn.transaction():
            stats.clip_added += _insert_clip(conn, model_name, block)


def _insert_clip(conn: Any, model: str, block: list[tuple[str, bytes]]) -> int:
    rows = (_clip_row(model, content_hash, blob) for content_hash, blob in block)
    columns = "image_id TEXT, model TEXT, embedding vector(512)"
    copy_to_temp(conn, "tmp_clip", columns, rows, types=("text", "text", "vector"))
    return int(
        conn.execute(
            "INSERT INTO clip_embeddings SELECT t.* FROM tmp_clip t JOIN images i ON i.id = t.image_id "
            "ON CONFLICT (image_id, model) DO NOTHING"
        ).rowcount
    )


def _clip_row(model: str, content_hash: str, blob: bytes) -> tuple[str, str, NDArray[np.float32]]:
    vector = np.frombuffer(blob, dtype="<f4")
    if vector.shape[0] != CLIP_DIM:
        raise DatabaseError(f"CLIP vectors of {model} have {vector.shape[0]} dimensions; the schema holds {CLIP_DIM}")
    return content_hash, model, vector.astype(np.float32)
