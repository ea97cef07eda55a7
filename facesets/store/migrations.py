"""Numbered schema migrations for the PostgreSQL store, recorded in ``schema_migrations``.

Each migration runs in its own transaction under an advisory lock, so ``facesets migrate`` is safe to
run twice and from two processes at once. Code that uses the store calls :func:`check_schema` first: a
database older than the code says to run ``facesets migrate``; a newer one says to upgrade facesets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..base.errors import DatabaseError, SchemaError

LOCK_KEY = 0x66616365  # "face": the advisory lock every migrate takes


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            "CREATE EXTENSION IF NOT EXISTS vector",
            """CREATE TABLE galleries (
            id BIGSERIAL PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            file_count INTEGER,
            total_bytes BIGINT,
            metadata JSONB
        )""",
            """CREATE TABLE images (
            id TEXT PRIMARY KEY,                     -- BLAKE3 hex of the bytes
            size BIGINT NOT NULL,
            width INTEGER,
            height INTEGER
        )""",
            """CREATE TABLE gallery_images (
            gallery_id BIGINT NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            filename TEXT NOT NULL,
            image_id TEXT REFERENCES images(id),
            file_size BIGINT,
            PRIMARY KEY (gallery_id, filename)
        )""",
            """CREATE TABLE immich_assets (
            asset_id UUID PRIMARY KEY,
            owner_id UUID NOT NULL,
            checksum TEXT NOT NULL,                  -- base64 SHA-1, as Immich reports it
            image_id TEXT REFERENCES images(id)
        )""",
            """CREATE TABLE models (
            purpose TEXT PRIMARY KEY,                -- 'face' or 'clip': one embedding space each
            identity JSONB NOT NULL
        )""",
            """CREATE TABLE persons (
            id BIGSERIAL PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
            """CREATE TABLE person_names (
            person_id BIGINT PRIMARY KEY REFERENCES persons(id) ON DELETE CASCADE,
            name TEXT NOT NULL
        )""",
            """CREATE TABLE face_detections (
            id BIGSERIAL PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES images(id),
            box REAL[] NOT NULL,                     -- x1, y1, x2, y2 in the upright original
            keypoints REAL[] NOT NULL,               -- 5 x (x, y)
            score REAL NOT NULL,
            face_short REAL NOT NULL,
            model TEXT NOT NULL,
            embedding vector(512) NOT NULL,
            person_id BIGINT REFERENCES persons(id) ON DELETE SET NULL,
            assigned_by TEXT,                        -- 'cluster' or 'manual'
            UNIQUE (image_id, model, box)
        )""",
            """CREATE TABLE face_not_person (
            face_id BIGINT NOT NULL REFERENCES face_detections(id) ON DELETE CASCADE,
            person_id BIGINT NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
            PRIMARY KEY (face_id, person_id)
        )""",
            """CREATE TABLE clip_embeddings (
            image_id TEXT NOT NULL REFERENCES images(id),
            model TEXT NOT NULL,
            embedding vector(512) NOT NULL,
            PRIMARY KEY (image_id, model)
        )""",
            """CREATE TABLE face_sets (
            number INTEGER PRIMARY KEY,              -- faceset_NNN
            person_id BIGINT REFERENCES persons(id) ON DELETE SET NULL,
            manifest JSONB
        )""",
            "CREATE INDEX face_detections_person ON face_detections(person_id)",
            "CREATE INDEX face_detections_embedding ON face_detections USING hnsw (embedding vector_cosine_ops)",
            "CREATE INDEX clip_embeddings_embedding ON clip_embeddings USING hnsw (embedding vector_cosine_ops)",
        ),
    ),
    Migration(
        2,
        "image paths",
        (
            """CREATE TABLE image_paths (
            path TEXT PRIMARY KEY,                   -- a file's name on the Linux side (queue and cache paths)
            image_id TEXT NOT NULL REFERENCES images(id)
        )""",
            "CREATE INDEX image_paths_by_image ON image_paths(image_id)",
        ),
    ),
    Migration(
        3,
        "persons, face sets and Immich owners",
        (
            "ALTER TABLE immich_assets ALTER COLUMN owner_id DROP NOT NULL",
            "ALTER TABLE immich_assets ADD COLUMN user_label TEXT",
            "CREATE INDEX immich_assets_by_image ON immich_assets(image_id)",
            "ALTER TABLE face_sets ADD COLUMN name TEXT, ADD COLUMN members INTEGER NOT NULL DEFAULT 0, "
            "ADD COLUMN matched INTEGER NOT NULL DEFAULT 0, ADD COLUMN loaded_at TIMESTAMPTZ NOT NULL DEFAULT now()",
            # who is in a face lives beside the face: updating it never rewrites the 2 KB row and its HNSW entry
            """CREATE TABLE face_persons (
            face_id BIGINT PRIMARY KEY REFERENCES face_detections(id) ON DELETE CASCADE,
            person_id BIGINT NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
            assigned_by TEXT NOT NULL CHECK (assigned_by IN ('cluster', 'faceset', 'manual'))
        )""",
            "INSERT INTO face_persons SELECT id, person_id, CASE WHEN assigned_by IN ('faceset', 'manual') "
            "THEN assigned_by ELSE 'cluster' END FROM face_detections WHERE person_id IS NOT NULL",
            "ALTER TABLE face_detections DROP COLUMN person_id, DROP COLUMN assigned_by",
            "CREATE INDEX face_persons_by_person ON face_persons(person_id)",
            "CREATE INDEX face_not_person_by_person ON face_not_person(person_id)",
            "CREATE UNIQUE INDEX person_names_unique ON person_names(lower(name))",
        ),
    ),
    Migration(
        4,
        "hidden and merged persons",
        (
            # hidden: out of `persons list` and never joined by clustering; merged: another person was merged
            # into it by hand, so `persons reset` keeps it whole, as it keeps a named person
            "ALTER TABLE persons ADD COLUMN hidden BOOLEAN NOT NULL DEFAULT false, "
            "ADD COLUMN merged BOOLEAN NOT NULL DEFAULT false",
        ),
    ),
    Migration(
        5,
        "cover faces",
        # the face a person is shown by, chosen on the review page (none: its first face)
        ("ALTER TABLE persons ADD COLUMN cover_face BIGINT REFERENCES face_detections(id) ON DELETE SET NULL",),
    ),
    Migration(
        6,
        "review activity",
        (
            # each change made on the review page, with what it changed as it was before (for undo)
            """CREATE TABLE review_actions (
            id BIGSERIAL PRIMARY KEY,
            at TIMESTAMPTZ NOT NULL DEFAULT now(),
            summary TEXT NOT NULL,
            before JSONB NOT NULL,
            undone BOOLEAN NOT NULL DEFAULT false
        )""",
        ),
    ),
    Migration(
        7,
        "face quality",
        (
            # the recognizer's raw embedding norm (NULL: loaded before it was kept), which tracks the quality of the
            # crop (see facesets.cluster.calibration.poor_faces); and the faces set aside on the review page
            "ALTER TABLE face_detections ADD COLUMN norm REAL",
            """CREATE TABLE dismissed_faces (
            face_id BIGINT PRIMARY KEY REFERENCES face_detections(id) ON DELETE CASCADE
        )""",
        ),
    ),
)
LATEST = MIGRATIONS[-1].version


def ensure_extension(conn: Any, name: str = "vector") -> None:
    """Fail with the ``CREATE EXTENSION`` hint when the server does not offer the extension."""
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise DatabaseError(
            f"the database server does not offer the {name!r} extension (pgvector). Install pgvector on the server, "
            f"then as a superuser run: CREATE EXTENSION {name};"
        )


def applied_versions(conn: Any) -> list[int]:
    exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return []
    return [int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(conn: Any, target: int = LATEST) -> list[Migration]:
    """Apply the pending migrations up to ``target``, each in a transaction under the advisory lock; return those
    applied."""
    ensure_extension(conn)
    applied: list[Migration] = []
    for migration in (m for m in MIGRATIONS if m.version <= target):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = applied_versions(conn)
            if done and max(done) > LATEST:
                raise _too_new(max(done))
            if migration.version in done:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
            applied.append(migration)
    return applied


def check_schema(conn: Any) -> int:
    """The schema version, or :class:`SchemaError` when it is not the one this code uses."""
    done = applied_versions(conn)
    current = max(done) if done else 0
    if current > LATEST:
        raise _too_new(current)
    if current < LATEST:
        raise SchemaError(
            f"the database schema is at version {current}, older than this facesets ({LATEST}): "
            "run `facesets migrate` first"
        )
    return current


def _too_new(version: int) -> SchemaError:
    return SchemaError(
        f"the database schema is at version {version}, newer than this facesets knows ({LATEST}): upgrade facesets"
    )
