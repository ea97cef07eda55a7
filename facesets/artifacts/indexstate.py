"""The gallery index state: what ``facesets index`` has seen, in one SQLite file beside the caches.

It answers the skip layers' questions without reading any photo: a gallery's file count and total bytes
at its last complete index (layer 1), all known ``(filename, content hash, size)`` of a gallery in one
query (layer 2, used by layer 3), and whether a content hash was already embedded (layer 4). Every change
is made in a transaction that the index stage commits only after the face cache has flushed the same
images, so a kill never leaves the state claiming work the cache lacks. Schema changes are numbered
migrations recorded in ``state_meta``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..base.errors import StateError

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE galleries (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            file_count INTEGER,            -- at the last complete index, NULL until then
            total_bytes INTEGER,
            metadata TEXT,                 -- index.json as JSON
            indexed_at REAL
        )""",
        """CREATE TABLE images (
            hash TEXT PRIMARY KEY,         -- BLAKE3 hex of the bytes
            size INTEGER NOT NULL,
            status TEXT NOT NULL,          -- ok, no_face or error
            faces INTEGER NOT NULL,
            reason TEXT
        )""",
        """CREATE TABLE gallery_images (
            gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            filename TEXT NOT NULL,
            image_hash TEXT,               -- NULL when the file could not be read
            file_size INTEGER,             -- NULL until known
            PRIMARY KEY (gallery_id, filename)
        )""",
        "CREATE INDEX gallery_images_by_hash ON gallery_images(image_hash)",
    ),
    # the CLIP model (BLAKE3 of its image tower) whose vectors the gallery had at its last complete index
    2: ("ALTER TABLE galleries ADD COLUMN clip_model TEXT",),
}


@dataclass(frozen=True)
class GalleryRow:
    id: int
    path: str
    file_count: int | None
    total_bytes: int | None
    clip_model: str | None = None


@dataclass(frozen=True)
class KnownFile:
    image_hash: str | None
    file_size: int | None


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


class IndexState:
    """The state file; one writer (the thread that opened it) plus thread-safe hash lookups.

    Every write joins the open transaction (starting one if needed); nothing is durable before
    :meth:`commit`, and :meth:`close` rolls back what was not committed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_file() and self.path.stat().st_size == 0:
            log.warning("%s is empty (not an index state): starting a new one, so every file is read again", self.path)
        try:
            self._db = _connect(self.path)
            self._migrate()
            self._reader = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path} is not a usable index state ({exc}). It was left untouched: move it away to "
                "index from scratch."
            ) from exc
        self._reader_lock = threading.Lock()
        self._in_transaction = False

    def damaged(self, exc: sqlite3.DatabaseError) -> StateError:
        """The error for a state file that fails while in use (a damaged page, a full disk)."""
        if "full" in str(exc).lower():
            return StateError(
                f"the disk holding {self.path} is full ({exc}): nothing after the last commit was kept; free space "
                "and run the same command again"
            )
        return StateError(
            f"{self.path} is damaged ({exc}): move it away (and its -wal file) to index from scratch, or restore a "
            "backup; the face cache beside it is kept"
        )

    def close(self) -> None:
        """Roll back what was not committed and close; a connection that cannot roll back is closed anyway."""
        try:
            if self._in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # closing discards the open transaction all the same
        finally:
            self._in_transaction = False
            self._db.close()
            self._reader.close()

    def _migrate(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("CREATE TABLE IF NOT EXISTS state_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self._db.execute("SELECT value FROM state_meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} has index-state schema {version}, newer than this facesets reads "
                    f"({SCHEMA_VERSION}): upgrade facesets."
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number]:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO state_meta(key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(number),),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- transactions ------------------------------------------------------------------------------

    def begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def commit(self) -> None:
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    # -- settings ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state_meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.begin()
        self._db.execute(
            "INSERT INTO state_meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # -- galleries -----------------------------------------------------------------------------------

    def gallery(self, path: str) -> GalleryRow | None:
        row = self._db.execute(
            "SELECT id, path, file_count, total_bytes, clip_model FROM galleries WHERE path=?", (path,)
        ).fetchone()
        return None if row is None else GalleryRow(*row)

    def ensure_gallery(self, path: str) -> int:
        self.begin()
        self._db.execute("INSERT INTO galleries(path) VALUES (?) ON CONFLICT(path) DO NOTHING", (path,))
        row = self._db.execute("SELECT id FROM galleries WHERE path=?", (path,)).fetchone()
        return int(row[0])

    def known_files(self, gallery_id: int) -> dict[str, KnownFile]:
        """Layer 2: every known file of a gallery, in one query."""
        rows = self._db.execute(
            "SELECT filename, image_hash, file_size FROM gallery_images WHERE gallery_id=?", (gallery_id,)
        )
        return {name: KnownFile(digest, size) for name, digest, size in rows}

    def set_gallery_stats(
        self,
        gallery_id: int,
        file_count: int,
        total_bytes: int,
        metadata: dict[str, Any] | None,
        when: float,
        clip_model: str | None = None,
    ) -> None:
        """Layer 1's record of a complete index, with the CLIP model whose vectors the gallery now has."""
        self.begin()
        document = None if metadata is None else orjson.dumps(metadata).decode()
        self._db.execute(
            "UPDATE galleries SET file_count=?, total_bytes=?, metadata=COALESCE(?, metadata), indexed_at=?, "
            "clip_model=? WHERE id=?",
            (file_count, total_bytes, document, when, clip_model, gallery_id),
        )

    def link_many(self, rows: list[tuple[int, str, str | None, int]]) -> None:
        """``(gallery_id, filename, image_hash, file_size)`` rows, inserted or updated in one call."""
        self.begin()
        self._db.executemany(
            "INSERT INTO gallery_images(gallery_id, filename, image_hash, file_size) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(gallery_id, filename) DO UPDATE SET image_hash=excluded.image_hash, "
            "file_size=excluded.file_size",
            rows,
        )

    def set_file_size(self, gallery_id: int, filename: str, file_size: int) -> None:
        self.begin()
        self._db.execute(
            "UPDATE gallery_images SET file_size=? WHERE gallery_id=? AND filename=?", (file_size, gallery_id, filename)
        )

    def unlink(self, gallery_id: int, filenames: Iterable[str]) -> None:
        self.begin()
        self._db.executemany(
            "DELETE FROM gallery_images WHERE gallery_id=? AND filename=?", [(gallery_id, n) for n in filenames]
        )

    def indexed_galleries_under(self, prefix: str) -> list[GalleryRow]:
        rows = self._db.execute(
            "SELECT id, path, file_count, total_bytes FROM galleries WHERE path = ? OR path LIKE ? ESCAPE '\\'",
            (prefix, _like_prefix(prefix)),
        )
        return [GalleryRow(*row) for row in rows]

    # -- images --------------------------------------------------------------------------------------

    def has_image(self, image_hash: str) -> bool:
        """Layer 4, callable from any thread: was this content already embedded (or failed)?"""
        with self._reader_lock:
            row = self._reader.execute("SELECT 1 FROM images WHERE hash=?", (image_hash,)).fetchone()
        return row is not None

    def add_images(self, rows: list[tuple[str, int, str, int, str | None]]) -> None:
        """``(hash, size, status, faces, reason)`` rows, inserted or updated in one call."""
        self.begin()
        self._db.executemany(
            "INSERT INTO images(hash, size, status, faces, reason) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(hash) DO UPDATE SET status=excluded.status, faces=excluded.faces, reason=excluded.reason",
            rows,
        )

    def purge(self, prefix: str) -> set[str]:
        """Forget the galleries under ``prefix`` and the images no other gallery links; return those hashes."""
        self.begin()
        galleries = [row.id for row in self.indexed_galleries_under(prefix)]
        hashes: set[str] = set()
        for gallery_id in galleries:
            rows = self._db.execute("SELECT image_hash FROM gallery_images WHERE gallery_id=?", (gallery_id,))
            hashes.update(str(h) for (h,) in rows if h)
        self._db.executemany("DELETE FROM galleries WHERE id=?", [(g,) for g in galleries])
        orphans = set()
        for image_hash in hashes:
            linked = self._db.execute("SELECT 1 FROM gallery_images WHERE image_hash=? LIMIT 1", (image_hash,))
            if linked.fetchone() is None:
                orphans.add(image_hash)
        self._db.executemany("DELETE FROM images WHERE hash=?", [(h,) for h in orphans])
        return orphans

    def counts(self) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self._db.execute(sql).fetchone()[0])

        return {
            "galleries": one("SELECT COUNT(*) FROM galleries"),
            "galleries_complete": one("SELECT COUNT(*) FROM galleries WHERE file_count IS NOT NULL"),
            "gallery_images": one("SELECT COUNT(*) FROM gallery_images"),
            "images": one("SELECT COUNT(*) FROM images"),
            "faces": one("SELECT COALESCE(SUM(faces), 0) FROM images"),
        }


def _like_prefix(prefix: str) -> str:
    escaped = prefix.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


@dataclass(frozen=True)
class GalleryExport:
    """One gallery as ``facesets load`` copies it: its stats and the files whose content is known."""

    path: str
    file_count: int | None
    total_bytes: int | None
    metadata: str | None
    files: list[tuple[str, str, int | None]]  # filename, content hash, size


def exported_galleries(path: Path) -> Generator[GalleryExport, None, None]:
    """Every gallery of the state file at ``path``, read-only (a running index may hold it open)."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = source.execute("SELECT id, path, file_count, total_bytes, metadata FROM galleries").fetchall()
        for local_id, folder, count, total, metadata in rows:
            files = source.execute(
                "SELECT filename, image_hash, file_size FROM gallery_images WHERE gallery_id = ? "
                "AND image_hash IS NOT NULL",
                (local_id,),
            ).fetchall()
            yield GalleryExport(folder, count, total, metadata, files)
    finally:
        source.close()
