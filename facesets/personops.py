"""``facesets persons``: look at, name, merge, reset and correct the persons of the store.

These replace the raw SQL of the original README. Each command is one transaction.

Who is in a face is recorded in ``face_persons`` (face, person, assigned_by):

    cluster   ``facesets cluster`` (machine work: what ``reset`` undoes)
    faceset   a face set loaded by ``facesets load`` (your curated folders)
    manual    ``persons assign`` (your hand)

``reset`` unassigns the machine's faces (of one person or of all) and removes the persons left without a
face; a person who keeps faces from a face set or a hand keeps its name. ``not`` records "this face is not
this person" (and unassigns the face if needed), so no later clustering puts it back.

A person is named on the command line by its number, its name (any case) or a face set it came from
(``faceset_007``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import PersonError

SET_REF = re.compile(r"^faceset_(\d{3,})$")


@dataclass(frozen=True)
class PersonRow:
    id: int
    name: str | None
    faces: int
    by_hand: int  # faces from face sets or assigned by hand: what reset keeps
    photos: int
    face_sets: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaceRow:
    face: int
    image: str
    paths: list[str]
    score: float
    assigned_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_person(conn: Any, ref: str) -> int:
    """The id of the person ``ref`` names: a number, a name (case-insensitive) or ``faceset_NNN``."""
    text = ref.strip()
    if text.isdigit():
        row = conn.execute("SELECT id FROM persons WHERE id = %s", (int(text),)).fetchone()
    elif match := SET_REF.match(text):
        row = conn.execute(
            "SELECT person_id FROM face_sets WHERE number = %s AND person_id IS NOT NULL", (int(match.group(1)),)
        ).fetchone()
    else:
        row = conn.execute("SELECT person_id FROM person_names WHERE lower(name) = lower(%s)", (text,)).fetchone()
    if row is None:
        raise PersonError(f"no person {ref!r} in the database: `facesets persons list` shows the persons")
    return int(row[0])


def list_persons(conn: Any) -> list[PersonRow]:
    rows = conn.execute(
        """SELECT p.id, n.name, count(f.id), count(f.id) FILTER (WHERE a.assigned_by <> 'cluster'),
                  count(DISTINCT f.image_id),
                  coalesce((SELECT array_agg(s.number ORDER BY s.number) FROM face_sets s WHERE s.person_id = p.id),
                           '{}')
           FROM persons p LEFT JOIN person_names n ON n.person_id = p.id
           LEFT JOIN face_persons a ON a.person_id = p.id LEFT JOIN face_detections f ON f.id = a.face_id
           GROUP BY p.id, n.name ORDER BY count(f.id) DESC, p.id"""
    ).fetchall()
    return [PersonRow(int(a), b, int(c), int(d), int(e), [int(x) for x in f]) for a, b, c, d, e, f in rows]


def person_faces(conn: Any, person: int, limit: int) -> list[FaceRow]:
    rows = conn.execute(
        """SELECT f.id, f.image_id, coalesce(array_agg(p.path ORDER BY p.path) FILTER (WHERE p.path IS NOT NULL), '{}'),
                  f.score, a.assigned_by
           FROM face_persons a JOIN face_detections f ON f.id = a.face_id
           LEFT JOIN image_paths p ON p.image_id = f.image_id
           WHERE a.person_id = %s GROUP BY f.id, a.assigned_by ORDER BY f.id LIMIT %s""",
        (person, limit),
    ).fetchall()
    return [FaceRow(int(a), b, list(c), round(float(d), 4), e) for a, b, c, d, e in rows]


def name_person(conn: Any, person: int, name: str) -> None:
    name = " ".join(name.split())
    if not name or name.isdigit() or SET_REF.match(name):
        raise PersonError(f"{name!r} cannot be a name: numbers and faceset_NNN already name persons")
    with conn.transaction():
        taken = conn.execute(
            "SELECT person_id FROM person_names WHERE lower(name) = lower(%s) AND person_id <> %s", (name, person)
        ).fetchone()
        if taken is not None:
            raise PersonError(
                f"{name!r} already names person {taken[0]}: if they are the same person, "
                f"`facesets persons merge {taken[0]} {person}`"
            )
        conn.execute(
            "INSERT INTO person_names(person_id, name) VALUES (%s, %s) "
            "ON CONFLICT (person_id) DO UPDATE SET name = excluded.name",
            (person, name),
        )


def merge_persons(conn: Any, keep: int, others: list[int]) -> dict[str, int]:
    """Move the faces, face sets, constraints and (if ``keep`` has none) the name of ``others`` to ``keep``."""
    others = sorted(set(others) - {keep})
    if not others:
        raise PersonError("name at least one person other than the one kept")
    with conn.transaction():
        conn.execute(
            "INSERT INTO face_not_person(face_id, person_id) SELECT face_id, %s FROM face_not_person "
            "WHERE person_id = ANY(%s) ON CONFLICT DO NOTHING",
            (keep, others),
        )
        moved = conn.execute(
            "UPDATE face_persons a SET person_id = %s WHERE person_id = ANY(%s) AND NOT EXISTS "
            "(SELECT 1 FROM face_not_person n WHERE n.face_id = a.face_id AND n.person_id = %s)",
            (keep, others, keep),
        ).rowcount
        refused = conn.execute("DELETE FROM face_persons WHERE person_id = ANY(%s)", (others,)).rowcount
        conn.execute("UPDATE face_sets SET person_id = %s WHERE person_id = ANY(%s)", (keep, others))
        name = conn.execute(
            "SELECT name FROM person_names WHERE person_id = ANY(%s) ORDER BY person_id LIMIT 1", (others,)
        ).fetchone()
        conn.execute("DELETE FROM persons WHERE id = ANY(%s)", (others,))
        if name is not None:
            conn.execute(
                "INSERT INTO person_names(person_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (keep, name[0])
            )
    return {"kept": keep, "merged": len(others), "faces_moved": int(moved), "faces_refused": int(refused)}


def reset_persons(conn: Any, person: int | None) -> dict[str, int]:
    """Unassign the faces clustering assigned (of one person, or all) and remove the persons left empty."""
    with conn.transaction():
        unassigned = conn.execute(
            "DELETE FROM face_persons WHERE assigned_by = 'cluster' AND (%(p)s::bigint IS NULL OR person_id = %(p)s)",
            {"p": person},
        ).rowcount
        removed = conn.execute(
            "DELETE FROM persons p WHERE (%(p)s::bigint IS NULL OR p.id = %(p)s) "
            "AND NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.person_id = p.id)",
            {"p": person},
        ).rowcount
        kept = conn.execute(
            "SELECT count(*) FROM persons WHERE (%(p)s::bigint IS NULL OR id = %(p)s)", {"p": person}
        ).fetchone()[0]
    return {"faces_unassigned": int(unassigned), "persons_removed": int(removed), "persons_kept": int(kept)}


def not_person(conn: Any, face: int, person: int) -> dict[str, int]:
    """Record that ``face`` is not ``person``; unassign it if it was."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM face_detections WHERE id = %s", (face,)).fetchone() is None:
            raise PersonError(f"no face {face} in the database: `facesets persons show PERSON` lists face numbers")
        conn.execute(
            "INSERT INTO face_not_person(face_id, person_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", (face, person)
        )
        unassigned = conn.execute(
            "DELETE FROM face_persons WHERE face_id = %s AND person_id = %s", (face, person)
        ).rowcount
    return {"face": face, "person": person, "unassigned": int(unassigned)}


def assign_face(conn: Any, face: int, person: int) -> dict[str, int]:
    """Put ``face`` in ``person`` by hand (lifting a recorded "not this person" for that pair)."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM face_detections WHERE id = %s", (face,)).fetchone() is None:
            raise PersonError(f"no face {face} in the database: `facesets persons show PERSON` lists face numbers")
        conn.execute(
            "INSERT INTO face_persons(face_id, person_id, assigned_by) VALUES (%s, %s, 'manual') "
            "ON CONFLICT (face_id) DO UPDATE SET person_id = excluded.person_id, assigned_by = 'manual'",
            (face, person),
        )
        conn.execute("DELETE FROM face_not_person WHERE face_id = %s AND person_id = %s", (face, person))
    return {"face": face, "person": person}
