"""Face sets into the store: each canonical ``faceset_NNN`` of ``facesets_swap_ready/`` maps to a person.

A set's members are found among the loaded faces by photo hash and box. The set keeps the person it was
mapped to on an earlier load; a new set takes the person most of its faces already belong to, or a new
person. Its faces then belong to that person (``assigned_by = 'faceset'``): a face that clustering had put
elsewhere moves, a face placed by hand or by another set stays, a recorded "not this person" is respected.
One transaction per set; loading the same sets again changes nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ..artifacts.facesetdir import MANIFEST, FaceSet, read_sets, read_top
from .database import copy_to_temp

BOX_TOLERANCE = 0.06  # manifests keep boxes to 0.01 px; the store keeps float32


def load_face_sets(conn: Any, root: Path, stats: Any) -> None:
    read_top(root)  # a malformed top-level manifest stops the load before anything is written
    for faceset in read_sets(root):
        with conn.transaction():
            assigned, created = _load_set(conn, faceset)
        stats.face_sets_loaded += 1
        stats.face_set_faces_assigned += assigned
        stats.face_set_persons_created += created


def _load_set(conn: Any, faceset: FaceSet) -> tuple[int, int]:
    faces = _member_faces(conn, faceset)
    held = conn.execute("SELECT person_id FROM face_sets WHERE number = %s", (faceset.number,)).fetchone()
    person = held[0] if held is not None else None
    created = 0
    if person is None:
        votes = Counter(person_id for _, person_id in faces if person_id is not None)
        if votes:
            person = min(votes, key=lambda candidate: (-votes[candidate], candidate))
        else:
            person = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0]
            created = 1
    manifest = faceset.folder / MANIFEST
    body = manifest.read_bytes().decode() if manifest.exists() else orjson.dumps({"set": faceset.name}).decode()
    conn.execute(
        "INSERT INTO face_sets(number, name, person_id, manifest, members, matched) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (number) DO UPDATE SET name = excluded.name, person_id = excluded.person_id, "
        "manifest = excluded.manifest, members = excluded.members, matched = excluded.matched, loaded_at = now() "
        "WHERE (face_sets.person_id, face_sets.manifest, face_sets.members, face_sets.matched) IS DISTINCT FROM "
        "(excluded.person_id, excluded.manifest, excluded.members, excluded.matched)",
        (faceset.number, faceset.name, person, body, len(faceset.members), len(faces)),
    )
    assigned = conn.execute(
        "INSERT INTO face_persons(face_id, person_id, assigned_by) SELECT f, %(p)s, 'faceset' FROM unnest(%(ids)s) f "
        "WHERE NOT EXISTS (SELECT 1 FROM face_not_person n WHERE n.face_id = f AND n.person_id = %(p)s) "
        "ON CONFLICT (face_id) DO UPDATE SET person_id = excluded.person_id, assigned_by = 'faceset' "
        "WHERE face_persons.assigned_by = 'cluster' AND face_persons.person_id <> excluded.person_id",
        {"p": person, "ids": [face_id for face_id, _ in faces]},
    ).rowcount
    return int(assigned), created


def _member_faces(conn: Any, faceset: FaceSet) -> list[tuple[int, int | None]]:
    """(face id, person id) of the loaded faces the set's members are."""
    if not faceset.members:
        return []
    members = [(member.content_hash, *member.bbox) for member in faceset.members]
    copy_to_temp(conn, "tmp_members", "image_id TEXT, x1 REAL, y1 REAL, x2 REAL, y2 REAL", members)
    rows = conn.execute(
        "SELECT DISTINCT f.id, a.person_id FROM tmp_members m JOIN face_detections f ON f.image_id = m.image_id "
        "AND abs(f.box[1] - m.x1) < %(t)s AND abs(f.box[2] - m.y1) < %(t)s "
        "AND abs(f.box[3] - m.x2) < %(t)s AND abs(f.box[4] - m.y2) < %(t)s "
        "LEFT JOIN face_persons a ON a.face_id = f.id ORDER BY f.id",
        {"t": BOX_TOLERANCE},
    ).fetchall()
    return [(int(face_id), person_id) for face_id, person_id in rows]
