"""``facesets cluster --database``: person clustering in the PostgreSQL store.

    face_detections ──> FaceRows (canonical order) ──> match to persons ──> cluster the rest ──> refine
                                                                                      │
    persons (+ recorded "face F is not person P") ─────────────────────────────────────┴─> assignments

The original tool's rules, on the clustering engine of the file-based ``facesets cluster``:

- only faces without a person are considered; an existing assignment (by clustering, by a face set, or by
  hand) is never changed;
- a new face joins the person whose centre is nearest within the model's match distance, unless it is
  recorded as not that person, or the person already has a face in the same photo;
- the rest are clustered (same algorithms, per-model thresholds and refine gates as the file-based stage;
  two faces of one photo never share a cluster); a new cluster whose centre lies within the match distance
  of a person joins that person under the same two rules, any other becomes a new person;
- faces left in clusters the gates drop stay unassigned and are considered again next run.

Faces are read in a canonical order (photo hash, box), so the result does not depend on load order. The
assignments are written in one transaction that re-checks each face is still unassigned, each person still
exists and no "not this person" was recorded meanwhile, so a concurrent ``facesets persons`` command is
never overwritten.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..artifacts.cache import EMBEDDING_DIM
from ..base.errors import ConfigError, DatabaseError
from ..base.progress import ProgressFactory
from ..base.settings import DEFAULT_PERSON_MIN_FACES
from ..cluster.algorithms import Algorithm, cluster_library
from ..cluster.calibration import LibraryEstimate, poor_faces
from ..cluster.identify import cluster_params, match_faces, refine
from ..cluster.thresholds import Thresholds, resolve_thresholds
from ..models.packs import PackIdentity
from .database import DatabaseConfig, connect, copy_to_temp, database_url, with_vectors
from .migrations import check_schema

log = logging.getLogger(__name__)

CLUSTER_LOCK = 0x70657273  # "pers": one person clustering at a time
READ_BATCH = 20_000


@dataclass(frozen=True)
class PersonClusterConfig:
    database: DatabaseConfig
    _: KW_ONLY
    algorithm: Algorithm = Algorithm.GRAPH
    threshold: float | None = None  # cosine similarity, as rbv's --threshold: cluster distance = 1 - threshold
    match: float | None = None
    cluster: float | None = None
    export: float | None = None
    closeness: float | None = None
    min_faces: int = DEFAULT_PERSON_MIN_FACES
    min_points: int = 3

    def overrides(self) -> dict[str, float | None]:
        if self.threshold is not None and self.cluster is not None:
            raise ConfigError("--threshold (a similarity) and --cluster-distance say the same thing: pass one")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"--threshold {self.threshold} is a cosine similarity: pass a value between 0 and 1")
        distance = round(1.0 - self.threshold, 6) if self.threshold is not None else self.cluster
        return {"match": self.match, "cluster": distance, "export": self.export, "closeness": self.closeness}


@dataclass
class FaceRows:
    """The faces of the store in canonical order."""

    ids: NDArray[np.int64]
    vectors: NDArray[np.float32]
    photos: NDArray[np.int64]
    persons: NDArray[np.int64]  # -1: no person
    norms: NDArray[np.float32] | None = None  # the recognizer's raw norm (NaN: not known), the face's quality

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PersonPlan:
    joins: dict[int, int] = field(default_factory=dict)  # face row -> existing person id
    new_groups: list[list[int]] = field(default_factory=list)  # face rows of each new person
    dropped: dict[str, int] = field(default_factory=dict)
    library: LibraryEstimate | None = None  # what clustering learned about the unassigned faces


@dataclass
class PersonClusterStats:
    faces: int = 0
    already_assigned: int = 0
    considered: int = 0
    joined_persons: int = 0
    new_persons: int = 0
    faces_in_new_persons: int = 0
    left_unassigned: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    estimate: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_person_cluster(config: PersonClusterConfig, progress: ProgressFactory | None = None) -> PersonClusterStats:
    started = time.monotonic()
    overrides = config.overrides()
    stats = PersonClusterStats()
    with database_url(config.database) as url, connect(url) as conn:
        check_schema(conn)
        with_vectors(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (CLUSTER_LOCK,))
        try:
            identity = face_model(conn)
            if identity is None or conn.execute("SELECT NOT EXISTS (SELECT 1 FROM face_detections)").fetchone()[0]:
                raise DatabaseError(
                    "the database holds no faces to cluster: `facesets load --caches caches` (or `facesets index "
                    "--database`) loads them first"
                )
            thresholds = resolve_thresholds(identity, overrides)
            faces = read_faces(conn)
            hidden = {int(row[0]) for row in conn.execute("SELECT id FROM persons WHERE hidden")}
            plan = plan_persons(faces, read_not_person(conn, faces), thresholds, config, hidden, progress)
            _summarise(stats, faces, plan, thresholds)
            write_plan(conn, faces, plan, stats)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (CLUSTER_LOCK,))
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


def face_model(conn: Any) -> PackIdentity | None:
    row = conn.execute("SELECT identity FROM models WHERE purpose = 'face'").fetchone()
    return None if row is None else PackIdentity.from_dict(row[0])


def read_faces(conn: Any) -> FaceRows:
    """Every face but those dismissed, in canonical order, into arrays sized up front (no per-row Python objects
    kept)."""
    dismissed = "NOT EXISTS (SELECT 1 FROM dismissed_faces d WHERE d.face_id = f.id)"  # set aside by hand
    count = int(conn.execute(f"SELECT count(*) FROM face_detections f WHERE {dismissed}").fetchone()[0])
    ids = np.empty(count, np.int64)
    vectors = np.empty((count, EMBEDDING_DIM), np.float32)
    persons = np.empty(count, np.int64)
    norms = np.empty(count, np.float32)
    photo_hashes: list[str] = []
    done = 0
    with conn.transaction(), conn.cursor(name="facesets_faces", binary=True) as cursor:
        cursor.itersize = READ_BATCH
        cursor.execute(
            "SELECT f.id, f.image_id, coalesce(a.person_id, -1), coalesce(f.norm, 'NaN'), f.embedding "
            "FROM face_detections f "
            f"LEFT JOIN face_persons a ON a.face_id = f.id WHERE {dismissed} ORDER BY f.image_id, f.box"
        )
        while block := cursor.fetchmany(READ_BATCH):
            stop = min(count, done + len(block))
            for offset, (face_id, image_id, person_id, norm, vector) in enumerate(block[: stop - done]):
                ids[done + offset] = face_id
                persons[done + offset] = person_id
                norms[done + offset] = norm
                vectors[done + offset] = vector.to_numpy()
                photo_hashes.append(image_id)
            done = stop
    _, photos = np.unique(np.asarray(photo_hashes[:done], dtype=object), return_inverse=True)
    return FaceRows(ids[:done], vectors[:done], photos.astype(np.int64), persons[:done], norms[:done])


def look_alike_groups(conn: Any, faces: list[int]) -> list[list[int]]:
    """``faces`` (unassigned faces, say) clustered among themselves with the store's model thresholds: the
    groups of two or more faces that look like one person (too few to have become a person), largest first."""
    identity = face_model(conn)
    if identity is None or len(faces) < 2:
        return []
    rows = (
        with_vectors(conn)
        .execute(
            "SELECT id, image_id, embedding FROM face_detections WHERE id = ANY(%s) ORDER BY image_id, box", (faces,)
        )
        .fetchall()
    )
    ids = np.asarray([int(row[0]) for row in rows], np.int64)
    _, photos = np.unique(np.asarray([row[1] for row in rows], dtype=object), return_inverse=True)
    vectors = np.asarray([row[2].to_numpy() for row in rows], np.float32)
    params = cluster_params(Algorithm.GRAPH, resolve_thresholds(identity, {}), 3)
    labels, _ = cluster_library(vectors, photos.astype(np.int64), params)
    groups = [ids[labels == label].tolist() for label in np.unique(labels)]
    return sorted((sorted(group) for group in groups if len(group) > 1), key=lambda group: (-len(group), group))


def read_not_person(conn: Any, faces: FaceRows) -> dict[int, set[int]]:
    """Recorded "face F is not person P", by face row."""
    row_of = {int(face_id): row for row, face_id in enumerate(faces.ids.tolist())}
    forbidden: dict[int, set[int]] = {}
    for face_id, person_id in conn.execute("SELECT face_id, person_id FROM face_not_person"):
        if face_id in row_of:
            forbidden.setdefault(row_of[face_id], set()).add(int(person_id))
    return forbidden


def plan_persons(
    faces: FaceRows,
    forbidden: dict[int, set[int]],
    thresholds: Thresholds,
    config: PersonClusterConfig,
    hidden: set[int] | None = None,
    progress: ProgressFactory | None = None,
) -> PersonPlan:
    """Which unassigned faces join which person, and which form new persons (pure: no database). ``hidden``
    persons are never joined."""
    plan = PersonPlan()
    assigned = faces.persons >= 0
    centres, person_photos = person_centres(faces)
    for person in hidden or ():
        centres.pop(person, None)
    free = np.flatnonzero(~assigned)
    matched = match_faces(faces.vectors, faces.photos, free, centres, person_photos, thresholds.match, forbidden)
    for person, found in matched.items():
        for row, _ in found:
            plan.joins[row] = person
            person_photos[person].add(int(faces.photos[row]))
    rest = np.asarray([row for row in free.tolist() if row not in plan.joins], np.int64)
    params = cluster_params(config.algorithm, thresholds, config.min_points)
    bar = progress(len(rest)) if progress else None
    poor = poor_faces(faces.norms[rest]) if faces.norms is not None else None
    labels, plan.library = cluster_library(faces.vectors[rest], faces.photos[rest], params, faces.vectors, poor, bar)
    if bar:
        bar.close()
    keys = [str(face_id) for face_id in faces.ids.tolist()]
    groups, dropped = refine(faces.vectors, keys, rest, labels, thresholds, config.min_faces, plan.library, poor)
    for entry in dropped:
        plan.dropped[entry["reason"]] = plan.dropped.get(entry["reason"], 0) + entry["faces"]
    for members in groups:
        rows = [row for row, _ in members]
        joins = _person_for_group(faces, rows, centres, person_photos, forbidden, thresholds.match)
        if joins is None:
            plan.new_groups.append(rows)
            continue
        plan.joins.update(dict.fromkeys(rows, joins))
        person_photos[joins].update(int(faces.photos[row]) for row in rows)
    return plan


def person_centres(faces: FaceRows) -> tuple[dict[int, NDArray[np.float32]], dict[int, set[int]]]:
    """Each person's centre (unit mean of its faces) and the photos it holds a face in."""
    assigned = np.flatnonzero(faces.persons >= 0)
    if not len(assigned):
        return {}, {}
    people, inverse = np.unique(faces.persons[assigned], return_inverse=True)
    sums = np.zeros((len(people), faces.vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, faces.vectors[assigned])
    sums /= np.linalg.norm(sums, axis=1, keepdims=True)
    centres = {int(person): sums[i].astype(np.float32) for i, person in enumerate(people.tolist())}
    photos: dict[int, set[int]] = {int(person): set() for person in people.tolist()}
    for row in assigned.tolist():
        photos[int(faces.persons[row])].add(int(faces.photos[row]))
    return centres, photos


def _person_for_group(
    faces: FaceRows,
    rows: list[int],
    centres: dict[int, NDArray[np.float32]],
    person_photos: dict[int, set[int]],
    forbidden: dict[int, set[int]],
    distance: float,
) -> int | None:
    """The existing person a new cluster belongs to, if its centre is near one the cluster may join."""
    if not centres:
        return None
    centre = faces.vectors[rows].mean(axis=0)
    centre /= np.linalg.norm(centre)
    numbers = sorted(centres)
    dist = 1.0 - np.stack([centres[n] for n in numbers]) @ centre
    photos = {int(faces.photos[row]) for row in rows}
    barred = set().union(*(forbidden.get(row, set()) for row in rows))
    for column in np.argsort(dist, kind="stable").tolist():
        if dist[column] > distance:
            return None
        person = int(numbers[column])
        if person not in barred and not photos & person_photos[person]:
            return person
    return None


def _summarise(stats: PersonClusterStats, faces: FaceRows, plan: PersonPlan, thresholds: Thresholds) -> None:
    stats.faces = len(faces)
    stats.already_assigned = int((faces.persons >= 0).sum())
    stats.considered = stats.faces - stats.already_assigned
    stats.joined_persons = len(plan.joins)
    stats.dropped = dict(sorted(plan.dropped.items()))
    stats.thresholds = thresholds.to_dict()
    stats.estimate = plan.library.to_dict() if plan.library else {}


def write_plan(conn: Any, faces: FaceRows, plan: PersonPlan, stats: PersonClusterStats) -> None:
    """Create the new persons and assign faces, in one transaction, re-checking each assignment."""
    with conn.transaction():
        new_ids = [
            int(row[0])
            for row in conn.execute(
                "INSERT INTO persons(created_at) SELECT now() FROM generate_series(1, %s) RETURNING id",
                (len(plan.new_groups),),
            )
        ]
        pairs = [(int(faces.ids[row]), person) for row, person in plan.joins.items()]
        for person, rows in zip(new_ids, plan.new_groups, strict=True):
            pairs += [(int(faces.ids[row]), person) for row in rows]
        copy_to_temp(conn, "tmp_assign", "face_id BIGINT, person_id BIGINT", pairs, types=("int8", "int8"))
        conn.execute("ANALYZE tmp_assign")  # without statistics the planner loops over the faces per row
        written = conn.execute(
            "INSERT INTO face_persons(face_id, person_id, assigned_by) SELECT t.face_id, t.person_id, 'cluster' "
            "FROM tmp_assign t WHERE EXISTS (SELECT 1 FROM persons p WHERE p.id = t.person_id) "
            "AND EXISTS (SELECT 1 FROM face_detections f WHERE f.id = t.face_id) "
            "AND NOT EXISTS (SELECT 1 FROM face_not_person n "
            "WHERE n.face_id = t.face_id AND n.person_id = t.person_id) "
            "ON CONFLICT (face_id) DO NOTHING"
        ).rowcount
        if written != len(pairs):
            log.warning(
                "%d assignments were skipped: those faces or persons changed during the run", len(pairs) - written
            )
        conn.execute(
            "DELETE FROM persons p WHERE p.id = ANY(%s) AND NOT EXISTS "
            "(SELECT 1 FROM face_persons a WHERE a.person_id = p.id)",
            (new_ids,),
        )
    stats.new_persons = len(new_ids)
    stats.faces_in_new_persons = sum(len(rows) for rows in plan.new_groups)
    stats.left_unassigned = stats.considered - stats.joined_persons - stats.faces_in_new_persons
