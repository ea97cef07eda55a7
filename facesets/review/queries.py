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


def people(conn: Any, show: str = "all") -> list[Person]:
    """The persons of one filter (:data:`FILTERS`), most faces first, each with its cover face (the face nearest
    its centre among the first faces, or the one set by hand)."""
    where = FILTERS[show]  # a key of a fixed table, never text from a request
    rows = conn.execute(
        f"""SELECT p.id, n.name, count(a.face_id), count(DISTINCT f.image_id), p.hidden,
                   coalesce(p.cover_face, min(a.face_id))
            FROM persons p LEFT JOIN person_names n ON n.person_id = p.id
            LEFT JOIN face_persons a ON a.person_id = p.id LEFT JOIN face_detections f ON f.id = a.face_id
            WHERE {where}
            GROUP BY p.id, n.name ORDER BY count(a.face_id) DESC, p.id"""
    ).fetchall()
    return [Person(int(a), b, int(c), int(d), bool(e), None if g is None else int(g)) for a, b, c, d, e, g in rows]


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


def person_faces(conn: Any, person_id: int, page: int, uncertain: bool) -> list[FaceTile]:
    """One page of a person's faces: in face order, or the least certain first (farthest from the centre)."""
    order = "distance DESC, f.id" if uncertain else "f.id"  # one of two fixed orders
    rows = conn.execute(
        f"""WITH centre AS (SELECT avg(f.embedding) AS c FROM face_persons a
                            JOIN face_detections f ON f.id = a.face_id WHERE a.person_id = %(p)s)
            SELECT f.id, f.image_id, f.score, f.embedding <=> (SELECT c FROM centre) AS distance, a.assigned_by
            FROM face_persons a JOIN face_detections f ON f.id = a.face_id
            WHERE a.person_id = %(p)s ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s""",
        {"p": person_id, "limit": PAGE, "offset": page * PAGE},
    ).fetchall()
    return [
        FaceTile(int(a), b, round(float(c), 3), None if d is None else round(float(d), 3), e) for a, b, c, d, e in rows
    ]


def merge_suggestions(conn: Any, person_id: int, limit: int = 6) -> list[tuple[Person, float]]:
    """The visible persons most likely to be this one: the cosine similarity of their centres, checked against
    sample faces of both (the mean similarity of up to 8 faces of each), highest first."""
    rows = conn.execute(
        """WITH centres AS MATERIALIZED (
               SELECT a.person_id, avg(f.embedding) AS c FROM face_persons a JOIN face_detections f ON f.id = a.face_id
               JOIN persons p ON p.id = a.person_id WHERE NOT p.hidden OR p.id = %(p)s GROUP BY a.person_id),
           near AS (SELECT o.person_id, 1 - (o.c <=> me.c) AS similarity FROM centres o, centres me
                    WHERE me.person_id = %(p)s AND o.person_id <> %(p)s ORDER BY o.c <=> me.c LIMIT %(limit)s),
           samples AS (SELECT a.person_id, f.embedding, row_number() OVER (PARTITION BY a.person_id ORDER BY f.id) AS k
                       FROM face_persons a JOIN face_detections f ON f.id = a.face_id
                       WHERE a.person_id = %(p)s OR a.person_id IN (SELECT person_id FROM near))
           SELECT near.person_id, near.similarity,
                  (SELECT avg(1 - (x.embedding <=> y.embedding)) FROM samples x, samples y
                   WHERE x.person_id = %(p)s AND y.person_id = near.person_id AND x.k <= 8 AND y.k <= 8)
           FROM near ORDER BY near.similarity DESC""",
        {"p": person_id, "limit": limit},
    ).fetchall()
    found = []
    for other, similarity, sampled in rows:
        row = person(conn, int(other))
        if row is not None:
            found.append((row, round(min(float(similarity), float(sampled or similarity)), 3)))
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


def face_source(conn: Any, face: int) -> tuple[str, tuple[float, float, float, float]] | None:
    """The image and box of a face."""
    row = conn.execute("SELECT image_id, box FROM face_detections WHERE id = %s", (face,)).fetchone()
    return None if row is None else (str(row[0]), (row[1][0], row[1][1], row[1][2], row[1][3]))


def person_names(conn: Any) -> list[tuple[int, str]]:
    return [(int(a), str(b)) for a, b in conn.execute("SELECT person_id, name FROM person_names ORDER BY lower(name)")]
