"""The review page's activity: every change it makes, with the rows it changed as they were before, for undo.

:func:`recorded` wraps one change in one transaction: it keeps the state of the persons and faces the change
may touch (the persons rows and names, the faces' assignments, the "not this person" records and the face sets
of those persons), runs the change, and logs it. :func:`undo_last` puts that state back for the latest change
not undone yet, in one transaction, and removes the persons the change created that are left empty; undoing
again undoes the change before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from ..base.errors import PersonError

T = TypeVar("T")


@dataclass(frozen=True)
class Action:
    id: int
    at: str
    summary: str
    undone: bool


def recorded(conn: Any, summary: str, faces: Iterable[int], persons: Iterable[int], change: Callable[[], T]) -> T:
    """``change()`` (personops calls on ``conn``), logged with the state of ``faces`` and ``persons`` before it."""
    faces, persons = sorted(set(faces)), sorted(set(persons))
    with conn.transaction():
        before = _state(conn, faces, persons)
        before["max_person"] = int(conn.execute("SELECT coalesce(max(id), 0) FROM persons").fetchone()[0])
        result = change()
        conn.execute(
            "INSERT INTO review_actions(summary, before) VALUES (%s, %s::jsonb)",
            (summary, orjson.dumps(before).decode()),
        )
    return result


def recent(conn: Any, limit: int = 50) -> list[Action]:
    rows = conn.execute(
        "SELECT id, to_char(at, 'YYYY-MM-DD HH24:MI:SS'), summary, undone FROM review_actions "
        "ORDER BY id DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [Action(int(a), str(b), str(c), bool(d)) for a, b, c, d in rows]


def undo_last(conn: Any) -> Action:
    """Undo the latest change not undone yet; :class:`PersonError` when there is none."""
    with conn.transaction():
        row = conn.execute(
            "SELECT id, to_char(at, 'YYYY-MM-DD HH24:MI:SS'), summary, before FROM review_actions "
            "WHERE NOT undone ORDER BY id DESC LIMIT 1 FOR UPDATE"
        ).fetchone()
        if row is None:
            raise PersonError("nothing to undo")
        _restore(conn, row[3])
        conn.execute("UPDATE review_actions SET undone = true WHERE id = %s", (row[0],))
    return Action(int(row[0]), str(row[1]), str(row[2]), True)


def _state(conn: Any, faces: list[int], persons: list[int]) -> dict[str, Any]:
    scope = {"f": faces, "p": persons}
    return {
        "faces": faces,
        "persons": persons,
        "person_rows": [
            list(row)
            for row in conn.execute(
                "SELECT p.id, p.hidden, p.merged, p.cover_face, n.name FROM persons p "
                "LEFT JOIN person_names n ON n.person_id = p.id WHERE p.id = ANY(%(p)s)",
                scope,
            )
        ],
        "assignments": [
            list(row)
            for row in conn.execute(
                "SELECT face_id, person_id, assigned_by FROM face_persons "
                "WHERE face_id = ANY(%(f)s) OR person_id = ANY(%(p)s)",
                scope,
            )
        ],
        "not_person": [
            list(row)
            for row in conn.execute(
                "SELECT face_id, person_id FROM face_not_person WHERE face_id = ANY(%(f)s) OR person_id = ANY(%(p)s)",
                scope,
            )
        ],
        "dismissed": [
            int(row[0]) for row in conn.execute("SELECT face_id FROM dismissed_faces WHERE face_id = ANY(%(f)s)", scope)
        ],
        "face_sets": [
            list(row)
            for row in conn.execute("SELECT number, person_id FROM face_sets WHERE person_id = ANY(%(p)s)", scope)
        ],
    }


def _restore(conn: Any, before: dict[str, Any]) -> None:
    faces, persons = before["faces"], before["persons"]
    scope = {"f": faces, "p": persons}
    for person, hidden, merged, cover, _ in before["person_rows"]:
        conn.execute(
            "INSERT INTO persons(id, hidden, merged, cover_face) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
            "SET hidden = excluded.hidden, merged = excluded.merged, cover_face = excluded.cover_face",
            (person, hidden, merged, cover),
        )
    conn.execute("DELETE FROM person_names WHERE person_id = ANY(%(p)s)", scope)
    for person, _, _, _, name in before["person_rows"]:
        if name is not None:
            taken = conn.execute("SELECT person_id FROM person_names WHERE lower(name) = lower(%s)", (name,)).fetchone()
            if taken is not None:
                raise PersonError(f"cannot undo: the name {name!r} is now person {taken[0]}'s")
            conn.execute("INSERT INTO person_names(person_id, name) VALUES (%s, %s)", (person, name))
    conn.execute("DELETE FROM face_persons WHERE face_id = ANY(%(f)s) OR person_id = ANY(%(p)s)", scope)
    for face, person, by in before["assignments"]:
        conn.execute(
            "INSERT INTO face_persons(face_id, person_id, assigned_by) VALUES (%s, %s, %s) ON CONFLICT (face_id) "
            "DO UPDATE SET person_id = excluded.person_id, assigned_by = excluded.assigned_by",
            (face, person, by),
        )
    conn.execute("DELETE FROM face_not_person WHERE face_id = ANY(%(f)s) OR person_id = ANY(%(p)s)", scope)
    for face, person in before["not_person"]:
        conn.execute(
            "INSERT INTO face_not_person(face_id, person_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", (face, person)
        )
    conn.execute("DELETE FROM dismissed_faces WHERE face_id = ANY(%(f)s)", scope)
    for face in before["dismissed"]:
        conn.execute("INSERT INTO dismissed_faces(face_id) VALUES (%s) ON CONFLICT DO NOTHING", (face,))
    for number, person in before["face_sets"]:
        conn.execute("UPDATE face_sets SET person_id = %s WHERE number = %s", (person, number))
    conn.execute(  # persons the change made, left empty now
        "DELETE FROM persons p WHERE p.id > %s AND NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.person_id = p.id)",
        (before["max_person"],),
    )
