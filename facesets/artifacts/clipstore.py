"""The CLIP cache: one vector per content hash and CLIP model, in ``<caches>/clip.sqlite``.

Vectors of different models never mix: each model (name, BLAKE3 of its image tower, dimension) has its
own id, so changing ``--clip-model`` re-embeds CLIP only, and the face caches are untouched. Writes join a
transaction that the index stage commits after the face cache flush and before the index state commit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import StateError
from ..models.clip import ClipIdentity

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        visual_blake3 TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE IF NOT EXISTS vectors (
        model_id INTEGER NOT NULL REFERENCES models(id),
        hash TEXT NOT NULL,
        vector BLOB NOT NULL,          -- float32 little-endian, L2-normalised
        PRIMARY KEY (model_id, hash)
    )""",
)


class ClipStore:
    def __init__(self, path: Path, identity: ClipIdentity) -> None:
        self.path = Path(path)
        self.identity = identity
        try:
            self._db = self._connect()
            self._setup()
            self._reader = self._connect()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path} is not a usable CLIP cache ({exc}); it was left untouched") from exc
        self._lock = threading.Lock()
        self._pending: list[tuple[int, str, bytes]] = []

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    def _setup(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            row = self._db.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StateError(f"{self.path} has CLIP cache schema {row[0]}, newer than this facesets reads")
            self._db.execute(
                "INSERT OR IGNORE INTO store_meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self._db.execute(
                "INSERT OR IGNORE INTO models(name, visual_blake3) VALUES (?, ?)",
                (self.identity.name, self.identity.visual_blake3),
            )
            row = self._db.execute(
                "SELECT id FROM models WHERE visual_blake3=?", (self.identity.visual_blake3,)
            ).fetchone()
            self.model_id = int(row[0])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def has(self, content_hash: str) -> bool:
        """Whether this content has a vector of the current model (thread-safe, committed rows)."""
        with self._lock:
            row = self._reader.execute(
                "SELECT 1 FROM vectors WHERE model_id=? AND hash=?", (self.model_id, content_hash)
            ).fetchone()
        return row is not None

    def add(self, content_hash: str, vector: NDArray[np.float32]) -> None:
        import numpy as np

        self._pending.append((self.model_id, content_hash, np.asarray(vector, "<f4").tobytes()))

    def commit(self) -> None:
        if not self._pending:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO vectors(model_id, hash, vector) VALUES (?, ?, ?) "
                "ON CONFLICT(model_id, hash) DO UPDATE SET vector=excluded.vector",
                self._pending,
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._pending = []

    def delete(self, hashes: set[str]) -> None:
        """Forget these contents' vectors of every model (``--ml-purge``), in one committed transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM vectors WHERE hash=?", [(h,) for h in hashes])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def vectors(self) -> Iterator[tuple[str, NDArray[np.float32]]]:
        """Every committed (content hash, vector) of the current model, in hash order."""
        import numpy as np

        rows = self._db.execute("SELECT hash, vector FROM vectors WHERE model_id=? ORDER BY hash", (self.model_id,))
        for content_hash, blob in rows:
            yield str(content_hash), np.frombuffer(blob, dtype="<f4").astype(np.float32)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vectors WHERE model_id=?", (self.model_id,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()
        self._reader.close()


def stored_models(path: Path) -> list[tuple[int, str, str]]:
    """The CLIP models a store at ``path`` holds vectors of (id, name, BLAKE3 of the image tower), read-only."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = source.execute("SELECT id, name, visual_blake3 FROM models ORDER BY id")
        return [(int(a), str(b), str(c)) for a, b, c in rows]
    finally:
        source.close()


def stored_vectors(path: Path, model_id: int, batch: int) -> Iterator[list[tuple[str, bytes]]]:
    """The (content hash, float32 bytes) vectors of one model, ``batch`` at a time, in hash order, read-only."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = source.execute("SELECT hash, vector FROM vectors WHERE model_id = ? ORDER BY hash", (model_id,))
        while block := rows.fetchmany(batch):
            yield block
    finally:
        source.close()
