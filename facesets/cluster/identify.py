"""The cluster stage: face caches + existing face sets -> a cluster plan (``clusters.json``).

    caches ──> FaceTable (deduplicated, canonical order) ──┐
    facesets_swap_ready/ ──> identities (member vectors) ──┴─> match ──> cluster the rest ──> refine ──> plan

1. Every face of the caches, deduplicated by face key (photo hash + box) and sorted by it: the canonical
   order that makes the result independent of the input order.
2. The canonical sets' members are found in the caches by key; crops and hand-made images the caches do not
   hold are embedded with the model pack (``--model-dir``).
3. New faces (of photos no earlier run considered; all non-members with ``--reconsider``) join the nearest
   identity within the match distance: at most one face of a photo per identity.
4. The rest are clustered (:mod:`facesets.cluster.algorithms`); refine gates drop outliers beyond the export distance,
   then clusters with fewer than ``min_faces`` faces, or fewer than ``min_faces`` distinct shots (near-identical
   copies of one photo), or an average inner similarity below the cluster threshold.
5. The plan lists each identity's new members, the new set numbers and what was dropped and why. ``facesets
   export`` applies it. Nothing under ``facesets_swap_ready/`` is written by this stage.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..artifacts.cache import EMBEDDING_DIM, load_cache
from ..artifacts.facesetdir import FaceSet, face_key, highest_number, read_sets, read_top
from ..artifacts.layout import SETS_LOCK
from ..artifacts.plan import Plan, PlanFace, PlanIdentity, write_plan
from ..base.errors import CacheModelMismatchError, ConfigError, FaceSetError
from ..base.fsio import exclusive_lock
from ..base.progress import ProgressFactory
from ..base.settings import DEFAULT_MIN_FACES
from ..models.packs import PackIdentity
from .algorithms import Algorithm, ClusterParams, cluster_library, cohesion, components
from .calibration import LibraryEstimate, poor_faces
from .neighbors import first_of_runs, knn_graph
from .thresholds import Thresholds, resolve_thresholds

log = logging.getLogger(__name__)

NEAR_DUPLICATE = 0.92  # cosine similarity above which two faces are copies of one shot
MATCH_CHUNK = 65_536


class Embedder(Protocol):
    """Photos -> the embedding of each one's largest face (:class:`PackEmbedder` is the one facesets uses)."""

    def __call__(self, files: list[Path]) -> NDArray[np.float32]: ...


@dataclass(frozen=True)
class ClusterConfig:
    caches: tuple[Path, ...]
    sets_dir: Path
    plan: Path
    algorithm: Algorithm = Algorithm.GRAPH
    match: float | None = None
    cluster: float | None = None
    export: float | None = None
    closeness: float | None = None
    min_faces: int = DEFAULT_MIN_FACES
    min_points: int = 3
    reconsider: bool = False
    embedder: Embedder | None = None  # embeds the photos of hand-made sets the caches do not describe


@dataclass
class FaceTable:
    """Every face of the caches once, in canonical (key) order."""

    vectors: NDArray[np.float32]
    keys: list[str]
    photos: NDArray[np.int64]  # index into ``hashes``
    norms: NDArray[np.float32]  # the recognizer's raw embedding norms (NaN: not recorded in the cache)
    hashes: list[str]  # sorted
    faces: list[dict[str, Any]]  # what the plan records about each face

    def photo_index(self) -> dict[str, int]:
        return {value: i for i, value in enumerate(self.hashes)}

    def index(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}


@dataclass
class ClusterSummary:
    faces: int = 0
    candidates: int = 0
    matched: int = 0
    clustered: int = 0
    new_sets: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    plan: str = ""
    library: LibraryEstimate | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "faces": self.faces,
            "candidates": self.candidates,
            "matched": self.matched,
            "clustered": self.clustered,
            "new_sets": self.new_sets,
            "dropped": dict(sorted(self.dropped.items())),
            "estimate": self.library.to_dict() if self.library else {},
            "plan": self.plan,
        }


def run_cluster(config: ClusterConfig, progress: ProgressFactory | None = None) -> ClusterSummary:
    identity, table = load_faces(config.caches)
    check_embedder_model(config.embedder, identity)
    thresholds = resolve_thresholds(
        identity,
        {"match": config.match, "cluster": config.cluster, "export": config.export, "closeness": config.closeness},
    )
    with _sets_lock(config.sets_dir):  # an export applying a plan meanwhile would change what is read
        top = read_top(config.sets_dir)
        sets = read_sets(config.sets_dir)
    centres, set_photos = identity_centres(sets, table, config.embedder)
    members = {member.key for faceset in sets for member in faceset.members}
    candidates = [
        i
        for i, key in enumerate(table.keys)
        if key not in members and (config.reconsider or table.hashes[table.photos[i]] not in top.processed)
    ]
    summary = ClusterSummary(faces=len(table.keys), candidates=len(candidates))
    matched = match_faces(
        table.vectors, table.photos, np.asarray(candidates, np.int64), centres, set_photos, thresholds.match
    )
    summary.matched = sum(len(rows) for rows in matched.values())
    taken = {row for rows in matched.values() for row, _ in rows}
    rest = np.asarray([i for i in candidates if i not in taken], np.int64)
    summary.clustered = len(rest)
    params = cluster_params(config.algorithm, thresholds, config.min_points)
    bar = progress(len(rest)) if progress else None
    poor = poor_faces(table.norms[rest])
    labels, summary.library = cluster_library(table.vectors[rest], table.photos[rest], params, table.vectors, poor, bar)
    if bar:
        bar.close()
    groups, dropped = refine(
        table.vectors,
        table.keys,
        rest,
        labels,
        thresholds,
        config.min_faces,
        summary.library,
        poor,
    )
    for entry in dropped:
        summary.dropped[entry["reason"]] += entry["faces"]
    first_new = highest_number(config.sets_dir, top) + 1
    summary.new_sets = len(groups)
    made_against = top.applied_plans[-1] if top.applied_plans else ""
    plan = build_plan(
        config,
        identity,
        thresholds,
        summary.library,
        table,
        matched,
        groups,
        dropped,
        first_new,
        candidates,
        made_against,
    )
    write_plan(config.plan, plan)
    summary.plan = plan.id
    return summary


def _sets_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """The sets folder's lock (the one export holds while it applies a plan); nothing to lock if it is missing."""
    return exclusive_lock(root / SETS_LOCK) if root.is_dir() else contextlib.nullcontext()


def load_faces(paths: Iterable[Path]) -> tuple[PackIdentity, FaceTable]:
    identity: PackIdentity | None = None
    vectors: dict[str, NDArray[np.float32]] = {}
    norms: dict[str, float] = {}
    faces: dict[str, dict[str, Any]] = {}
    for path in paths:
        data = load_cache(path)
        if identity is None:
            identity = data.identity
        elif not identity.same_recognizer(data.identity):
            raise CacheModelMismatchError(
                f"{path} was made by {data.identity.describe()}, the first cache by {identity.describe()}: "
                "embeddings of different models cannot be clustered together; cluster each model's caches apart"
            )
        for row, meta in enumerate(data.meta):
            record = data.images[int(meta["image"])]
            key = face_key(record.content_hash, meta["bbox"])
            if key in faces:
                continue
            faces[key] = _face_entry(path, row, record, meta)
            vectors[key] = data.embeddings[row]
            norms[key] = float(meta["norm"])
    if identity is None:
        raise ConfigError("no face cache given: pass --cache FILE (one or more)")
    keys = sorted(faces)
    stacked = np.stack([vectors[key] for key in keys]) if keys else np.zeros((0, EMBEDDING_DIM), np.float32)
    table = FaceTable(
        vectors=np.ascontiguousarray(stacked, dtype=np.float32),
        keys=keys,
        photos=np.zeros(len(keys), np.int64),
        norms=np.asarray([norms[key] for key in keys], np.float32),
        hashes=sorted({faces[key]["hash"] for key in keys}),
        faces=[faces[key] for key in keys],
    )
    photo_of = table.photo_index()
    table.photos = np.asarray([photo_of[face["hash"]] for face in table.faces], np.int64)
    return identity, table


def _face_entry(path: Path, row: int, record: Any, meta: Any) -> dict[str, Any]:
    return {
        "key": face_key(record.content_hash, meta["bbox"]),
        "cache": str(path),
        "row": row,
        "source": record.path,
        "hash": record.content_hash,
        "asset_id": record.source.asset_id,
        "bbox": [round(float(v), 2) for v in meta["bbox"]],
        "kps": [[round(float(v), 3) for v in point] for point in meta["kps"]],
        "score": round(float(meta["score"]), 4),
        "face_short": round(float(meta["face_short"]), 1),
    }


def identity_centres(
    sets: list[FaceSet], table: FaceTable, embedder: Embedder | None
) -> tuple[dict[int, NDArray[np.float32]], dict[int, set[int]]]:
    """Each canonical set's centre (unit mean of its members' vectors) and the photos it already holds."""
    where = table.index()
    photo_of = table.photo_index()
    centres: dict[int, NDArray[np.float32]] = {}
    photos: dict[int, set[int]] = {}
    for faceset in sets:
        rows = [where[m.key] for m in faceset.members if m.key in where]
        vectors = [table.vectors[rows]] if rows else []
        outside = [faceset.folder / m.file for m in faceset.members if m.key not in where] + faceset.hand_files
        if outside:
            vectors.append(_embed_outside(faceset, outside, embedder))
        photos[faceset.number] = {photo_of[m.content_hash] for m in faceset.members if m.content_hash in photo_of}
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, EMBEDDING_DIM), np.float32)
        if len(stacked):
            centre = stacked.mean(axis=0)
            centres[faceset.number] = (centre / np.linalg.norm(centre)).astype(np.float32)
        else:
            log.warning("%s: no face found in its images; it takes no new faces", faceset.folder)
    return centres, photos


def _embed_outside(faceset: FaceSet, files: list[Path], embedder: Embedder | None) -> NDArray[np.float32]:
    if embedder is None:
        raise FaceSetError(
            f"{faceset.folder} holds {len(files)} image(s) no face cache describes (hand-made or edited set): "
            "pass --model-dir (or --model-pack) so they can be embedded, or add the caches they came from"
        )
    vectors: NDArray[np.float32] = embedder(files)
    return vectors


def cluster_params(algorithm: Algorithm, thresholds: Thresholds, min_points: int) -> ClusterParams:
    """The clustering engine's parameters for a model's thresholds (shared with person clustering)."""
    return ClusterParams(
        algorithm, thresholds.cluster, thresholds.closeness, min_points, impostors=thresholds.impostors
    )


def match_faces(
    vectors: NDArray[np.float32],
    photos: NDArray[np.int64],
    candidates: NDArray[np.int64],
    centres: dict[int, NDArray[np.float32]],
    set_photos: dict[int, set[int]],
    distance: float,
    forbidden: dict[int, set[int]] | None = None,
) -> dict[int, list[tuple[int, float]]]:
    """Faces that join an existing identity: nearest centre within ``distance``, one face per photo and identity.

    ``forbidden`` maps a face row to identities it must never join (recorded "not this person")."""
    if not centres or not len(candidates):
        return {}
    numbers = sorted(centres)
    matrix = np.stack([centres[n] for n in numbers])
    column_of = {number: column for column, number in enumerate(numbers)}
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for start in range(0, len(candidates), MATCH_CHUNK):
        rows = candidates[start : start + MATCH_CHUNK]
        dist = 1.0 - vectors[rows] @ matrix.T
        if forbidden:
            _forbid(dist, rows, forbidden, column_of)
        nearest = dist.argmin(axis=1)
        near = dist[np.arange(len(rows)), nearest]
        for row, column, value in zip(rows.tolist(), nearest.tolist(), near.tolist(), strict=True):
            number, photo = numbers[column], int(photos[row])
            if value > distance or photo in set_photos.get(number, set()):
                continue
            if (number, photo) not in best or (value, row) < best[(number, photo)]:
                best[(number, photo)] = (value, row)
    matched: dict[int, list[tuple[int, float]]] = {}
    for (number, _), (value, row) in sorted(best.items()):
        matched.setdefault(number, []).append((row, value))
    return matched


def _forbid(
    dist: NDArray[np.float32], rows: NDArray[np.int64], forbidden: dict[int, set[int]], column_of: dict[int, int]
) -> None:
    """Make each recorded "face is not this identity" pair unmatchable."""
    for offset in np.flatnonzero(np.isin(rows, np.fromiter(forbidden, np.int64))).tolist():
        for number in forbidden[int(rows[offset])]:
            if number in column_of:
                dist[offset, column_of[number]] = np.inf


def refine(
    vectors: NDArray[np.float32],
    keys: list[str],
    rows: NDArray[np.int64],
    labels: NDArray[np.int64],
    thresholds: Thresholds,
    min_faces: int,
    library: LibraryEstimate,
    poor: NDArray[np.bool_] | None = None,
) -> tuple[list[list[tuple[int, float]]], list[dict[str, Any]]]:
    """Apply the gates to each cluster: the kept groups (rows with distances) and what was dropped, why.

    ``rows`` index ``vectors`` and ``keys`` (the faces' stable names, used to order the groups); ``library``
    gives the thresholds the clustering learned, which the gates apply to each member and cluster; ``poor``
    (per row) marks the faces clustering left out for their quality: alone, they count as ``low_quality``."""
    kept: list[list[tuple[int, float]]] = []
    dropped: list[dict[str, Any]] = []
    if not len(rows):
        return kept, dropped
    order = np.argsort(labels, kind="stable")
    bounds = np.r_[np.flatnonzero(first_of_runs(labels[order])), len(labels)]
    alone: Counter[str] = Counter()
    for start, stop in itertools.pairwise(bounds):
        group = rows[order[start:stop]]
        verdict, members = _gate(vectors[group], group, thresholds, min_faces, library)
        if verdict == "singleton":
            alone["low_quality" if poor is not None and poor[order[start]] else "singleton"] += 1
            continue
        if verdict:
            dropped.append({"reason": verdict, "faces": len(group), "keys": [keys[i] for i in group[:5]]})
            continue
        outliers = len(group) - len(members)
        if outliers:
            dropped.append({"reason": "outlier", "faces": outliers, "keys": []})
        kept.append(members)
    dropped += [{"reason": reason, "faces": faces, "keys": []} for reason, faces in sorted(alone.items())]
    kept.sort(key=lambda members: (-len(members), keys[members[0][0]]))
    return kept, dropped


def _gate(
    vectors: NDArray[np.float32],
    group: NDArray[np.int64],
    thresholds: Thresholds,
    min_faces: int,
    library: LibraryEstimate,
) -> tuple[str, list[tuple[int, float]]]:
    """A cluster's verdict ("" kept) and its members with their distance to the centre.

    A member stays when its average similarity to the other members meets the threshold the clustering uses
    for one face against a cluster of that size (with ``--export-distance``: when it is that close to the
    centre); the cluster stays when enough members remain, its average inner similarity meets the threshold
    of the largest clusters and enough of them are distinct shots."""
    if len(group) == 1:
        return "singleton", []
    total = vectors.sum(axis=0)
    distances = 1.0 - vectors @ (total / np.linalg.norm(total))
    if thresholds.export is not None:
        inside = distances <= thresholds.export
    else:
        others = (vectors @ total - 1.0) / (len(group) - 1)
        inside = others >= library.required(np.array([1.0]), np.array([len(group) - 1.0]))
    members = sorted((int(row), round(float(d), 4)) for row, d, ok in zip(group, distances, inside, strict=True) if ok)
    if len(members) < min_faces:
        return "too_small", []
    inner = cohesion(total[None, :], np.array([len(vectors)]))[0]
    if inner < library.floor_similarity:
        return "not_cohesive", []
    if _distinct_shots(vectors[inside]) < min_faces:
        return "one_photo", []
    return "", members


def _distinct_shots(vectors: NDArray[np.float32]) -> int:
    """How many different shots: faces closer than :data:`NEAR_DUPLICATE` count as one."""
    graph = knn_graph(vectors, k=16, min_sim=NEAR_DUPLICATE)
    return len(np.unique(components(len(vectors), graph.src, graph.dst)))


def build_plan(
    config: ClusterConfig,
    identity: PackIdentity,
    thresholds: Thresholds,
    library: LibraryEstimate,
    table: FaceTable,
    matched: dict[int, list[tuple[int, float]]],
    groups: list[list[tuple[int, float]]],
    dropped: list[dict[str, Any]],
    first_new: int,
    candidates: list[int],
    made_against: str = "",
) -> Plan:
    """The plan; ``made_against`` is the last plan applied to the sets it was made from (export refuses the plan
    once another one has been applied since)."""

    def members(rows: list[tuple[int, float]]) -> tuple[PlanFace, ...]:
        return tuple(PlanFace.from_dict({**table.faces[row], "distance": value}) for row, value in rows)

    identities = [PlanIdentity(number, False, members(rows)) for number, rows in sorted(matched.items())]
    identities += [PlanIdentity(first_new + i, True, members(rows)) for i, rows in enumerate(groups)]
    return Plan(
        model=identity.to_dict(),
        algorithm=config.algorithm.value,
        thresholds=thresholds.to_dict(),
        estimate=library.to_dict(),
        min_faces=config.min_faces,
        caches=tuple(str(path) for path in config.caches),
        sets_dir=str(config.sets_dir),
        identities=tuple(identities),
        dropped=tuple(dropped),
        processed=tuple(sorted({table.hashes[table.photos[i]] for i in candidates})),
        made_against=made_against,
    ).with_id()


class PackEmbedder:
    """Embeds the images of hand-made sets with the caches' model pack, loaded on first use.

    ``pack`` is a model pack, or a function that finds one: then the pack is looked up only when a set
    holds images no cache describes, so a run that needs no model works where none is installed.
    A file's largest detected face is used; a square image with no detectable face is taken to be an
    aligned crop already (as our own exports are) and embedded whole."""

    def __init__(self, pack: Any, providers: tuple[str, ...]) -> None:
        self._pack = pack
        self.providers = providers
        self.expected: PackIdentity | None = None
        self._engine: Any = None

    @property
    def resolved(self) -> bool:
        return not callable(self._pack)

    @property
    def pack(self) -> Any:
        if callable(self._pack):
            self._pack = self._pack()
        return self._pack

    def check(self) -> None:
        """Refuse a pack of other models than the caches' (their embeddings would not compare)."""
        if self.expected is not None and not self.pack.identity().same_recognizer(self.expected):
            raise CacheModelMismatchError(
                f"--model-dir/--model-pack gives {self.pack.identity().describe()}, but the caches were made by "
                f"{self.expected.describe()}: pass the pack that made the caches"
            )

    def __call__(self, files: list[Path]) -> NDArray[np.float32]:
        from ..base.errors import ImageLoadError
        from ..models.decode import decode

        self.check()
        engine = self._load()
        vectors = []
        for path in files:
            try:
                image = decode(path.read_bytes())
            except (OSError, ImageLoadError) as exc:
                log.warning("skipping %s: %s", path, getattr(exc, "reason", None) or exc)
                continue
            faces = engine.analyze(image)
            if faces:
                vectors.append(max(faces, key=lambda face: face.area).embedding)
            elif abs(image.width - image.height) <= 2:
                vectors.append(engine.recognizer.embed([image.pixels])[0])
            else:
                log.warning("skipping %s: no face found", path)
        return np.stack(vectors) if vectors else np.zeros((0, EMBEDDING_DIM), np.float32)

    def _load(self) -> Any:
        if self._engine is None:
            from ..models.faces import build_engine
            from ..models.runtime import runtime_options

            self._engine = build_engine(self.pack, runtime_options(self.providers))
        return self._engine


def check_embedder_model(embedder: Embedder | None, identity: PackIdentity) -> None:
    """Give the embedder the caches' model; a pack already found is checked now, a lazy one at first use."""
    if isinstance(embedder, PackEmbedder):
        embedder.expected = identity
        if embedder.resolved:
            embedder.check()
