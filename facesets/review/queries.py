"""What the review pages show, read from the store in one query each (parameterised SQL only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAGE = 120  # faces per page of a person


@dataclass(frozen=True)
class Person:
    id: int
    name: str | None
    faces: int
    photos: int
    hidden: bool
    cover: int | None  # the face shown for the person


@dataclass(frozen=True)
class FaceTile:
    id: int
    image: str
    score: float
    distance: float | None  # cosine distance to the person's centre (or to the candidate's)
    assigned_by: str | None = None
    candidate: int | None = None
    candidate_name: str | None = None


@dataclass(frozen=True)
class PhotoFace:
    id: int
    box: tuple[float, float, float, float]
    person: int | None
    name: str | None


FILTERS = {
    "all": "NOT p.hidden",
    "named": "NOT p.hidden AND n.name IS NOT NULL",
    "unnamed": "NOT p.hidden AND n.name IS NULL",
    "hidden": "p.hidden",
}


PEOPLE_PAGE = 200  # persons per page of the people grid


def people(conn: Any, show: str = "all", page: int = 0) -> tuple[int, list[Person]]:
    """How many persons one filter (:data:`FILTERS`) holds, and one page of them, most faces first, each with
    its cover face (the one set by hand, else its first face). Faces are counted from the assignments alone;
    photos only for the persons of the page."""
    where = FILTERS[show]  # a key of a fixed table, never text from a request
    total = int(
        conn.execute(
            f"SELECT count(*) FROM persons p LEFT JOIN person_names n ON n.person_id = p.id WHERE {where}"
        ).fetchone()[0]
    )
    rows = conn.execute(
        f"""WITH counts AS (SELECT person_id, count(*) AS faces, min(face_id) AS first FROM face_persons
                            GROUP BY person_id)
            SELECT p.id, n.name, coalesce(c.faces, 0), p.hidden, coalesce(p.cover_face, c.first)
            FROM persons p LEFT JOIN person_names n ON n.person_id = p.id LEFT JOIN counts c ON c.person_id = p.id
            WHERE {where} ORDER BY coalesce(c.faces, 0) DESC, p.id LIMIT %s OFFSET %s""",
        (PEOPLE_PAGE, page * PEOPLE_PAGE),
    ).fetchall()
    ids = [int(row[0]) for row in rows]
    photos = dict(
        conn.execute(
            "SELECT a.person_id, count(DISTINCT f.image_id) FROM face_persons a JOIN face_detections f "
            "ON f.id = a.face_id WHERE a.person_id = ANY(%s) GROUP BY a.person_id",
            (ids,),
        ).fetchall()
    )
    return total, [
        Person(int(a), b, int(c), int(photos.get(a, 0)), bool(d), None if e is None else int(e))
        for a, b, c, d, e in rows
    ]


def person(conn: Any, person_id: int) -> Person | None:
    row = conn.execute(
        """SELECT p.id, n.name, count(a.face_id), count(DISTINCT f.image_id), p.hidden,
                  coalesce(p.cover_face, min(a.face_id))
           FROM persons p LEFT JOIN person_names n ON n.person_id = p.id
           LEFT JOIN face_persons a ON a.person_id = p.id LEFT JOIN face_detections f ON f.id = a.face_id
           WHERE p.id = %s GROUP BY p.id, n.name""",
        (person_id,),
    ).fetchone()
    if row is None:
        return None
    a, b, c, d, e, g = row
    return Person(int(a), b, int(c), int(d), bool(e), None if g is None else int(g))


def centre(conn: Any, person_id: int) -> str | None:
    """The mean of a person's face vectors (pgvector's text form), read once per page; None: no face."""
    row = conn.execute(
        "SELECT avg(f.embedding)::text FROM face_persons a JOIN face_detections f ON f.id = a.face_id "
        "WHERE a.person_id = %s",
        (person_id,),
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def person_faces(conn: Any, person_id: int, page: int, uncertain: bool, middle: str | None) -> list[FaceTile]:
    """One page of a person's faces: in face order, or the least certain first (farthest from the ``middle``,
    the person's :func:`centre`)."""
    if middle is None:
        return []
    order = "distance DESC, f.id" if uncertain else "f.id"  # one of two fixed orders
    rows = conn.execute(
        f"""SELECT f.id, f.image_id, f.score, f.embedding <=> %(c)s::vector AS distance, a.assigned_by
            FROM face_persons a JOIN face_detections f ON f.id = a.face_id
            WHERE a.person_id = %(p)s ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s""",
        {"p": person_id, "c": middle, "limit": PAGE, "offset": page * PAGE},
    ).fetchall()
    return [
        FaceTile(int(a), b, round(float(c), 3), None if d is None else round(float(d), 3), e) for a, b, c, d, e in rows
    ]


NEAR_FACES = 120  # faces of others nearest a person's centre, whose persons are the candidates


def merge_suggestions(conn: Any, person_id: int, middle: str | None, limit: int = 6) -> list[tuple[Person, float]]:
    """The visible persons most likely to be this one, highest first. Candidates are the persons of the faces
    of others nearest this person's centre (the HNSW index, so the cost does not grow with the store), the
    nearest first; each is scored by the similarity of the two centres, checked against sample faces of both
    (the mean similarity of up to 8 faces of each: the lower of the two counts)."""
    if middle is None:
        return []
    with conn.transaction():
        conn.execute(f"SET LOCAL hnsw.ef_search = {NEAR_FACES}")
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")  # past this person's own faces
        rows = conn.execute(
            """WITH near AS MATERIALIZED (
                   SELECT f.id, f.embedding <=> %(c)s::vector AS distance FROM face_detections f
                   WHERE NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.face_id = f.id AND a.person_id = %(p)s)
                   ORDER BY f.embedding <=> %(c)s::vector LIMIT %(near)s),
               ranked AS (SELECT a.person_id FROM near JOIN face_persons a ON a.face_id = near.id
                          JOIN persons p ON p.id = a.person_id WHERE NOT p.hidden
                          GROUP BY a.person_id ORDER BY min(near.distance) LIMIT 2 * %(limit)s),
               best AS (SELECT a.person_id, 1 - (avg(f.embedding) <=> %(c)s::vector) AS similarity
                        FROM face_persons a JOIN face_detections f ON f.id = a.face_id
                        WHERE a.person_id IN (SELECT person_id FROM ranked) GROUP BY a.person_id
                        ORDER BY similarity DESC LIMIT %(limit)s),
               samples AS (SELECT a.person_id, f.embedding,
                                  row_number() OVER (PARTITION BY a.person_id ORDER BY f.id) AS k
                           FROM face_persons a JOIN face_detections f ON f.id = a.face_id
                           WHERE a.person_id = %(p)s OR a.person_id IN (SELECT person_id FROM best))
               SELECT best.person_id, best.similarity,
                      (SELECT avg(1 - (x.embedding <=> y.embedding)) FROM samples x, samples y
                       WHERE x.person_id = %(p)s AND y.person_id = best.person_id AND x.k <= 8 AND y.k <= 8)
               FROM best ORDER BY best.similarity DESC""",
            {"p": person_id, "c": middle, "near": NEAR_FACES, "limit": limit},
        ).fetchall()
    found = []
    for other, similarity, sampled in rows:
        candidate = person(conn, int(other))
        if candidate is not None:
            found.append((candidate, round(min(float(similarity), float(sampled or similarity)), 3)))
    found.sort(key=lambda pair: -pair[1])
    return found


def photo_faces(conn: Any, image_id: str) -> list[PhotoFace]:
    rows = conn.execute(
        """SELECT f.id, f.box, a.person_id, n.name FROM face_detections f
           LEFT JOIN face_persons a ON a.face_id = f.id LEFT JOIN person_names n ON n.person_id = a.person_id
           WHERE f.image_id = %s ORDER BY f.id""",
        (image_id,),
    ).fetchall()
    return [PhotoFace(int(a), (b[0], b[1], b[2], b[3]), None if c is None else int(c), d) for a, b, c, d in rows]


def known_path(conn: Any, image_id: str) -> str | None:
    """A file of a known image of the store (the only files the page ever opens)."""
    row = conn.execute("SELECT path FROM image_paths WHERE image_id = %s ORDER BY path LIMIT 1", (image_id,)).fetchone()
    return None if row is None else str(row[0])


def face_source(conn: Any, face: int) -> tuple[str, list[float]] | None:
    """The image of a face and its 5 keypoints (x, y in the upright original)."""
    row = conn.execute("SELECT image_id, keypoints FROM face_detections WHERE id = %s", (face,)).fetchone()
    return None if row is None else (str(row[0]), [float(value) for value in row[1]])


def poor_cutoff(conn: Any) -> float | None:
    """The norm below which a face of the store is too blurred or small to tell
    (:func:`facesets.cluster.calibration.poor_cutoff` over every known norm)."""
    import numpy as np

    from ..cluster.calibration import poor_cutoff as cutoff

    norms = [row[0] for row in conn.execute("SELECT norm FROM face_detections WHERE norm IS NOT NULL")]
    return cutoff(np.asarray(norms, np.float32))


def match_distance(conn: Any) -> float | None:
    """The store's face model's match distance (a face joins a person's centre within it), where it is known."""
    from ..cluster.thresholds import model_thresholds
    from ..store.persons import face_model

    identity = face_model(conn)
    thresholds = model_thresholds(identity) if identity is not None else None
    return None if thresholds is None else thresholds.match


def person_names(conn: Any) -> list[tuple[int, str]]:
    return [(int(a), str(b)) for a, b in conn.execute("SELECT person_id, name FROM person_names ORDER BY lower(name)")]
