"""``facesets search`` and ``facesets similar``: images ranked by CLIP similarity through the pgvector index.

A text query is embedded by the CLIP text tower (:mod:`facesets.models.cliptext`); an image query is looked up by
its BLAKE3 among the loaded vectors, or embedded by the image tower when it is new. Either way the vector
must come from the model whose image vectors the database holds (``models`` table, purpose ``clip``).

The HNSW index answers the ranking; ``hnsw.ef_search`` is raised to twice the number of results asked for,
at least 100 (the default of 40 caps the results at 40 and misses more of the true nearest), and a
``--person`` filter uses pgvector's iterative index scan so a rare person still gets all the results that
exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..base.errors import ConfigError, DatabaseError, ImageLoadError
from ..models.clip import clip_identity, resolve_clip
from .database import with_vectors

MIN_EF_SEARCH = 100  # pgvector's default of 40 misses too many of the true top 20 (scripts/bench_db.py)
MAX_EF_SEARCH = 1000


@dataclass(frozen=True)
class Hit:
    image: str  # BLAKE3 of the bytes
    score: float  # cosine similarity
    paths: list[str] = field(default_factory=list)
    immich_assets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clip_folder(conn: Any, clip_dir: Path | None = None, clip_model: str | None = None) -> Path:
    """The folder of the CLIP model whose image vectors the store holds (``clip_model``/``clip_dir`` to choose
    another), or an error that says how to get vectors into the store."""
    held = conn.execute("SELECT identity->>'name' FROM models WHERE purpose = 'clip'").fetchone()
    if held is None:
        raise DatabaseError(
            "the database holds no CLIP vectors, so there is nothing to search: index the photos with a CLIP "
            "model (`facesets index`, the model under ~/.cache/facesets/clip/NAME or --clip-dir DIR), then "
            "`facesets load --caches caches` loads their vectors"
        )
    return resolve_clip(clip_dir, clip_model or held[0])


def check_clip_model(conn: Any, folder: Path) -> str:
    """The CLIP model name the database holds; refuses a folder of another model."""
    row = conn.execute("SELECT identity FROM models WHERE purpose = 'clip'").fetchone()
    if row is None:
        raise DatabaseError("the database holds no CLIP vectors: index with CLIP, then `facesets load`")
    held = row[0]
    visual = folder / "visual" / "model.onnx"
    same_name = folder.name == held.get("name")
    if not same_name or (visual.is_file() and clip_identity(folder).visual_blake3 != held.get("visual_blake3")):
        raise DatabaseError(
            f"the database holds CLIP vectors of {held.get('name')}, but {folder} is another model: "
            f"pass --clip-dir to the folder of {held.get('name')} (embedding spaces never mix)"
        )
    return str(held["name"])


def nearest_images(
    conn: Any,
    vector: NDArray[np.float32],
    limit: int,
    person: int | None = None,
    exclude: str | None = None,
) -> list[Hit]:
    """The ``limit`` images nearest to ``vector`` (of ``person``'s photos when given), best first."""
    with_vectors(conn)
    query = np.asarray(vector, np.float32)
    with conn.transaction():
        conn.execute(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * limit))}")
        if person is not None:
            conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = conn.execute(
            """WITH ranked AS MATERIALIZED (
                   SELECT c.image_id, c.embedding <=> %(q)s AS distance FROM clip_embeddings c
                   WHERE (%(person)s::bigint IS NULL OR c.image_id IN
                          (SELECT f.image_id FROM face_persons a JOIN face_detections f ON f.id = a.face_id
                           WHERE a.person_id = %(person)s))
                     AND c.image_id IS DISTINCT FROM %(exclude)s
                   ORDER BY c.embedding <=> %(q)s LIMIT %(limit)s)
               SELECT r.image_id, 1 - r.distance,
                      ARRAY(SELECT p.path FROM image_paths p WHERE p.image_id = r.image_id
                            UNION SELECT g.path || '/' || gi.filename FROM gallery_images gi
                            JOIN galleries g ON g.id = gi.gallery_id WHERE gi.image_id = r.image_id ORDER BY 1),
                      ARRAY(SELECT a.asset_id::text FROM immich_assets a WHERE a.image_id = r.image_id ORDER BY 1)
               FROM ranked r ORDER BY r.distance, r.image_id""",
            {"q": query, "person": person, "exclude": exclude, "limit": limit},
        ).fetchall()
    return [Hit(image, round(float(score), 4), list(paths), list(assets)) for image, score, paths, assets in rows]


def stored_vector(conn: Any, content_hash: str) -> NDArray[np.float32] | None:
    with_vectors(conn)
    row = conn.execute("SELECT embedding FROM clip_embeddings WHERE image_id = %s", (content_hash,)).fetchone()
    return None if row is None else np.asarray(row[0], np.float32)


def image_vector(
    conn: Any, path: Path, clip_folder: Callable[[], Path], providers: tuple[str, ...]
) -> tuple[NDArray[np.float32], str]:
    """The CLIP vector of the image at ``path`` and its BLAKE3: the loaded one, else embedded now."""
    import blake3

    from ..models.clipvisual import ClipVisual
    from ..models.decode import decode
    from ..models.runtime import runtime_options

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    digest = blake3.blake3(data).hexdigest()
    vector = stored_vector(conn, digest)
    if vector is not None:
        return vector, digest
    folder = clip_folder()
    check_clip_model(conn, folder)
    try:
        image = decode(data)
    except ImageLoadError as exc:
        raise ConfigError(f"cannot decode {path}: {exc.reason}") from exc
    visual = ClipVisual(folder, runtime_options(providers))
    return visual.embed([image])[0], digest
