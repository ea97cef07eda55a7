"""``facesets persons``: look at, name, merge, reset and correct the persons of the store.

These replace the raw SQL of the original README. Each command is one transaction.

Who is in a face is recorded in ``face_persons`` (face, person, assigned_by):

    cluster   ``facesets cluster`` (machine work: what ``reset`` undoes)
    faceset   a face set loaded by ``facesets load`` (your curated folders)
    manual    ``persons assign`` (your hand)

``reset`` unassigns the machine's faces (of one person or of all) and removes the persons left without a
face. Naming and merging are manual work: a named person, and a person others were merged into, is kept whole
(with every face it has, whoever assigned it) unless ``--names`` is given; any person keeps the faces from face
sets and those assigned by hand, and a person who keeps a face keeps its name. ``not`` records "this face is
not this person" (and unassigns the face if needed), so no later clustering puts it back. ``hide`` keeps a
person out of ``list`` and out of clustering's matches (no new face joins it) until ``unhide``.

A person is named on the command line by its number, its name (any case) or a face set it came from
(``faceset_007``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..base.errors import PersonError

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


def list_persons(conn: Any, hidden: bool = False) -> list[PersonRow]:
    """Every person (``hidden``: the hidden ones instead), most faces first."""
    rows = conn.execute(
        """SELECT p.id, n.name, count(f.id), count(f.id) FILTER (WHERE a.assigned_by <> 'cluster'),
                  count(DISTINCT f.image_id),
                  coalesce((SELECT array_agg(s.number ORDER BY s.number) FROM face_sets s WHERE s.person_id = p.id),
                           '{}')
           FROM persons p LEFT JOIN person_names n ON n.person_id = p.id
           LEFT JOIN face_persons a ON a.person_id = p.id LEFT JOIN face_detections f ON f.id = a.face_id
           WHERE p.hidden = %s
           GROUP BY p.id, n.name ORDER BY count(f.id) DESC, p.id""",
        (hidden,),
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
        conn.execute("UPDATE persons SET merged = true WHERE id = %s", (keep,))
        if name is not None:
            conn.execute(
                "INSERT INTO person_names(person_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (keep, name[0])
            )
    return {"kept": keep, "merged": len(others), "faces_moved": int(moved), "faces_refused": int(refused)}


def reset_persons(conn: Any, person: int | None, names: bool = False) -> dict[str, int]:
    """Unassign the faces clustering assigned (of one person, or all) and remove the persons left empty; named
    and merged persons are left whole unless ``names``."""
    scope = {"p": person, "all": names}
    with conn.transaction():
        unassigned = conn.execute(
            "DELETE FROM face_persons a WHERE a.assigned_by = 'cluster' "
            "AND (%(p)s::bigint IS NULL OR a.person_id = %(p)s) AND (%(all)s OR NOT EXISTS "
            "(SELECT 1 FROM persons p LEFT JOIN person_names n ON n.person_id = p.id "
            "WHERE p.id = a.person_id AND (p.merged OR n.name IS NOT NULL)))",
            scope,
        ).rowcount
        removed = conn.execute(
            "DELETE FROM persons p WHERE (%(p)s::bigint IS NULL OR p.id = %(p)s) "
            "AND NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.person_id = p.id)",
            scope,
        ).rowcount
        kept = conn.execute(
            "SELECT count(*) FROM persons WHERE (%(p)s::bigint IS NULL OR id = %(p)s)", scope
        ).fetchone()[0]
    return {"faces_unassigned": int(unassigned), "persons_removed": int(removed), "persons_kept": int(kept)}


def hide_person(conn: Any, person: int, hidden: bool) -> dict[str, Any]:
    with conn.transaction():
        conn.execute("UPDATE persons SET hidden = %s WHERE id = %s", (hidden, person))
    return {"person": person, "hidden": hidden}


def set_cover(conn: Any, person: int, face: int) -> dict[str, int]:
    """Show ``person`` by ``face`` (one of its own faces)."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM face_persons WHERE face_id = %s AND person_id = %s", (face, person)).fetchone():
            conn.execute("UPDATE persons SET cover_face = %s WHERE id = %s", (face, person))
            return {"person": person, "cover": face}
    raise PersonError(f"face {face} is not a face of person {person}")


def not_person_many(conn: Any, faces: list[int], person: int) -> dict[str, int]:
    """:func:`not_person` for several faces, in one transaction."""
    with conn.transaction():
        unassigned = sum(not_person(conn, face, person)["unassigned"] for face in faces)
    return {"faces": len(faces), "person": person, "unassigned": unassigned}


def new_person(conn: Any, faces: list[int]) -> dict[str, Any]:
    """A new person of ``faces`` (faces of no person yet, say), assigned by hand, in one transaction; refused
    whole if two of them are of one photo."""
    with conn.transaction():
        _refuse_one_photo_twice(conn, faces)
        person = int(conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0])
        for face in faces:
            assign_face(conn, face, person)
    return {"faces": len(faces), "person": person}


def _refuse_one_photo_twice(conn: Any, faces: list[int]) -> None:
    clash = conn.execute(
        "SELECT f.image_id FROM face_detections f WHERE f.id = ANY(%s) GROUP BY f.image_id HAVING count(*) > 1",
        (faces,),
    ).fetchone()
    if clash is not None:
        raise PersonError("two of the faces are of one photo: a photo shows a person once")


def move_faces(conn: Any, faces: list[int], source: int, target: int | None) -> dict[str, Any]:
    """Move faces of ``source`` into ``target`` (``None``: a new person), in one transaction: each is recorded as
    not ``source`` and assigned to ``target`` by hand. Two faces of one photo never end in one person: the
    move is refused whole if it would."""
    with conn.transaction():
        if target is None:
            target = int(conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0])
        if target == source:
            raise PersonError("the faces are already in that person")
        _refuse_one_photo_twice(conn, faces)
        for face in faces:
            not_person(conn, face, source)
            assign_face(conn, face, target)
    return {"faces": len(faces), "from": source, "person": target}


@dataclass(frozen=True)
class UnassignedFace:
    face: int
    image: str
    paths: list[str]
    score: float
    candidate: int | None  # the person whose centre is nearest (not hidden, not recorded as "not this person")
    candidate_name: str | None
    distance: float | None  # cosine distance to that centre
    norm: float | None = None  # the recognizer's raw norm (its quality; None: not known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unassigned_faces(conn: Any, limit: int) -> tuple[int, list[UnassignedFace]]:
    """How many faces have no person (and were not dismissed), and the first ``limit`` of them with their best
    candidate person."""
    total = int(
        conn.execute(
            "SELECT count(*) FROM face_detections f WHERE NOT EXISTS (SELECT 1 FROM face_persons a "
            "WHERE a.face_id = f.id) AND NOT EXISTS (SELECT 1 FROM dismissed_faces d WHERE d.face_id = f.id)"
        ).fetchone()[0]
    )
    rows = conn.execute(
        """WITH centres AS MATERIALIZED (
               SELECT a.person_id, avg(f.embedding) AS centre FROM face_persons a
               JOIN face_detections f ON f.id = a.face_id JOIN persons p ON p.id = a.person_id
               WHERE NOT p.hidden GROUP BY a.person_id)
           SELECT f.id, f.image_id,
                  coalesce((SELECT array_agg(i.path ORDER BY i.path) FROM image_paths i WHERE i.image_id = f.image_id),
                           '{}'),
                  f.score, best.person_id, n.name, best.distance, f.norm
           FROM face_detections f
           LEFT JOIN LATERAL (
               SELECT c.person_id, c.centre <=> f.embedding AS distance FROM centres c
               WHERE NOT EXISTS (SELECT 1 FROM face_not_person x WHERE x.face_id = f.id AND x.person_id = c.person_id)
               ORDER BY distance, c.person_id LIMIT 1) best ON true
           LEFT JOIN person_names n ON n.person_id = best.person_id
           WHERE NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.face_id = f.id)
             AND NOT EXISTS (SELECT 1 FROM dismissed_faces d WHERE d.face_id = f.id)
           ORDER BY f.id LIMIT %s""",
        (limit,),
    ).fetchall()
    return total, [
        UnassignedFace(
            int(a),
            b,
            list(c),
            round(float(d), 4),
            None if e is None else int(e),
            g,
            None if h is None else round(float(h), 4),
            None if k is None or k != k else round(float(k), 4),  # NULL or NaN: not known
        )
        for a, b, c, d, e, g, h, k in rows
    ]


def dismiss_faces(conn: Any, faces: list[int]) -> dict[str, int]:
    """Set ``faces`` aside: out of the unassigned faces and out of clustering (too blurred or small to tell)."""
    with conn.transaction():
        added = conn.execute(
            "INSERT INTO dismissed_faces(face_id) SELECT id FROM face_detections WHERE id = ANY(%s) "
            "ON CONFLICT DO NOTHING",
            (faces,),
        ).rowcount
    return {"dismissed": int(added)}


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


def assign_face(conn: Any, face: int, person: int, move_other: bool = False) -> dict[str, Any]:
    """Put ``face`` in ``person`` by hand (lifting a recorded "not this person" for that pair). A photo shows a
    person once: if ``person`` holds another face of the same photo, refuse, or with ``move_other`` unassign it."""
    with conn.transaction():
        found = conn.execute("SELECT image_id FROM face_detections WHERE id = %s", (face,)).fetchone()
        if found is None:
            raise PersonError(f"no face {face} in the database: `facesets persons show PERSON` lists face numbers")
        others = [
            int(row[0])
            for row in conn.execute(
                "SELECT f.id FROM face_detections f JOIN face_persons a ON a.face_id = f.id "
                "WHERE f.image_id = %s AND a.person_id = %s AND f.id <> %s ORDER BY f.id",
                (found[0], person, face),
            )
        ]
        if others and not move_other:
            paths = [
                row[0]
                for row in conn.execute(
                    "SELECT path FROM image_paths WHERE image_id = %s ORDER BY path LIMIT 1", (found[0],)
                )
            ]
            photo = paths[0] if paths else found[0]
            raise PersonError(
                f"person {person} already has face {others[0]} of the same photo ({photo}): a photo shows a person "
                f"once. `facesets persons assign {face} {person} --move-other` moves face {others[0]} out of it"
            )
        conn.execute("DELETE FROM face_persons WHERE face_id = ANY(%s)", (others,))
        conn.execute(
            "INSERT INTO face_persons(face_id, person_id, assigned_by) VALUES (%s, %s, 'manual') "
            "ON CONFLICT (face_id) DO UPDATE SET person_id = excluded.person_id, assigned_by = 'manual'",
            (face, person),
        )
        lifted = conn.execute(
            "DELETE FROM face_not_person WHERE face_id = %s AND person_id = %s", (face, person)
        ).rowcount
    return {"face": face, "person": person, "moved_out": others, "lifted_not_person": bool(lifted)}
