"""``state-<user>.json``: what the Immich stage has settled, so a re-run or a resume costs no request for it.

Format (version 1)::

    {
      "format": "facesets.immich-state", "version": 1,
      "user": "peter", "owner_id": "<Immich user id>", "server": "http://host:2283/api",
      "cursor": 3,                 # listing page to resume from after a stop; null after a complete run
      "seen": {"<asset id>": {"outcome": "staged", "path": "mnt/photos/a.jpg", "checksum": "<base64 SHA-1>",
                              "hash": "<BLAKE3>", "size": 1234, "duplicate_of": ""}},
      "pending": {"<asset id>": "<path>"},   # left for a retry (transient failure); its path stays reserved
      "runs": [{...counters of a run...}]    # the last 50 runs
    }

``seen`` holds only assets whose outcome cost requests (staged, no faces, no big face, duplicate after
download); videos, trash and the like are re-filtered from the listing for free. The API key is never
stored. Commits append one line to ``<state>.journal`` (flushed and fsync-ed); the snapshot is rewritten
atomically when the journal outgrows it and at the end of a run, and at load (which also drops a line half
written by a kill). A file of another format or a newer version is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from ...artifacts.layout import journal_of, lock_of
from ...base.errors import StateError
from ...base.fsio import atomic_write_json, exclusive_lock, remove_stale_temps, temp_pattern

FORMAT = "facesets.immich-state"
VERSION = 1
KEEP_RUNS = 50
MIN_COMPACT_BYTES = 4 << 20


class Outcome(StrEnum):
    STAGED = "staged"
    NO_FACES = "no_faces"
    NO_BIG_FACE = "no_big_face"
    DUPLICATE = "duplicate"  # its bytes equal a staged or cached photo's (found after download)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeenAsset:
    outcome: Outcome
    path: str
    checksum: str = ""
    hash: str = ""
    size: int = 0
    duplicate_of: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeenAsset:
        return cls(
            Outcome(data["outcome"]),
            str(data["path"]),
            str(data.get("checksum", "")),
            str(data.get("hash", "")),
            int(data.get("size", 0)),
            str(data.get("duplicate_of", "")),
        )


class StageState:
    """The state of one user's staging, held under a lock for the lifetime of the object."""

    def __init__(self, path: Path, user: str) -> None:
        self.path = Path(path)
        self.user = user
        self.owner_id = ""
        self.server = ""
        self.cursor: int | None = None
        self.seen: dict[str, SeenAsset] = {}
        self.pending: dict[str, str] = {}
        self.runs: list[dict[str, Any]] = []
        self._changes: dict[str, Any] = {"seen": {}, "pending": {}, "unpending": []}
        self._lock = contextlib.ExitStack()

    @property
    def journal(self) -> Path:
        return journal_of(self.path)

    @classmethod
    def open(cls, path: Path, user: str, read_only: bool = False) -> StageState:
        """Lock, read (snapshot + journal) and compact; a missing file gives an empty state. ``read_only`` (a dry
        run) reads without locking, compacting or creating anything."""
        state = cls(path, user)
        if not read_only:
            state.path.parent.mkdir(parents=True, exist_ok=True)
            state._lock.enter_context(exclusive_lock(lock_of(state.path)))
            remove_stale_temps(state.path.parent, temp_pattern(state.path.name))  # a killed snapshot write
        try:
            if state.path.exists():
                state._read_snapshot()
            if state.journal.exists():
                state._replay_journal(read_only)
                if not read_only:
                    state.compact()
        except BaseException:
            state.close()
            raise
        return state

    def close(self) -> None:
        self._lock.close()

    # -- changes -----------------------------------------------------------------------------------------

    def settle(self, asset_id: str, seen: SeenAsset) -> None:
        self.seen[asset_id] = seen
        self.pending.pop(asset_id, None)
        self._changes["pending"].pop(asset_id, None)
        self._changes["seen"][asset_id] = asdict(seen)

    def defer(self, asset_id: str, path: str) -> None:
        """Leave an asset for the next run, keeping its path reserved."""
        self.pending[asset_id] = path
        self._changes["pending"][asset_id] = path

    def forget_pending(self, asset_id: str) -> None:
        if self.pending.pop(asset_id, None) is not None:
            self._changes["unpending"].append(asset_id)

    def commit(self, cursor: int | None) -> None:
        """Make the changes since the last commit durable (one journal line)."""
        self.cursor = cursor
        line = orjson.dumps({**self._changes, "cursor": cursor}) + b"\n"
        with open(self.journal, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self._changes = {"seen": {}, "pending": {}, "unpending": []}
        snapshot = self.path.stat().st_size if self.path.exists() else 0
        if self.journal.stat().st_size > max(MIN_COMPACT_BYTES, snapshot):
            self.compact()

    def add_run(self, counters: dict[str, Any]) -> None:
        self.runs = [*self.runs, counters][-KEEP_RUNS:]

    def compact(self) -> None:
        """Rewrite the snapshot atomically with everything committed, then drop the journal."""
        document = {
            "format": FORMAT,
            "version": VERSION,
            "user": self.user,
            "owner_id": self.owner_id,
            "server": self.server,
            "cursor": self.cursor,
            "seen": {asset_id: asdict(seen) for asset_id, seen in self.seen.items()},
            "pending": self.pending,
            "runs": self.runs,
        }
        atomic_write_json(self.path, document)
        self.journal.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------------------

    def _read_snapshot(self) -> None:
        try:
            document = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StateError(f"staging state {self.path} cannot be read ({exc}); it was left untouched") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise StateError(f'{self.path} is not a facesets staging state (no "format": "{FORMAT}")')
        version = document.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise StateError(f"{self.path} has version {version!r}; this facesets reads {VERSION}: upgrade facesets")
        if document.get("user") != self.user:
            raise StateError(f"{self.path} belongs to user {document.get('user')!r}, not {self.user!r}")
        try:
            self.owner_id = str(document.get("owner_id", ""))
            self.server = str(document.get("server", ""))
            self.cursor = document.get("cursor")
            self.seen = {str(k): SeenAsset.from_dict(v) for k, v in document.get("seen", {}).items()}
            self.pending = {str(k): str(v) for k, v in document.get("pending", {}).items()}
            self.runs = list(document.get("runs", []))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"{self.path} has a malformed record ({exc!r}); it was left untouched") from None

    def _replay_journal(self, read_only: bool = False) -> None:
        """Apply complete journal lines in order; a torn last line (a kill mid-write) is ignored. A damaged line
        before others is skipped with a warning, and the journal is copied beside it first (nothing is lost)."""
        lines = self.journal.read_bytes().split(b"\n")
        while lines and not lines[-1].strip():
            lines.pop()
        copied = False
        for number, raw in enumerate(lines, 1):
            try:
                change = orjson.loads(raw)
                seen = {str(k): SeenAsset.from_dict(v) for k, v in change["seen"].items()}
                pending = {str(k): str(v) for k, v in change.get("pending", {}).items()}
                unpending = [str(asset_id) for asset_id in change.get("unpending", [])]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                if number == len(lines):
                    break  # the torn last line of a killed write
                if not copied:
                    copied = True
                    kept = ""
                    if not read_only:  # a dry run writes nothing, not even this copy
                        copy = self.journal.with_name(f"{self.journal.name}.damaged-{int(time.time())}")
                        shutil.copyfile(self.journal, copy)
                        kept = f"; the journal was kept as {copy}"
                    log.warning("%s: line %d is damaged and was skipped%s", self.journal, number, kept)
                continue
            self.seen.update(seen)
            for asset_id in seen:
                self.pending.pop(asset_id, None)
            self.pending.update(pending)
            for asset_id in unpending:
                self.pending.pop(asset_id, None)
            self.cursor = change.get("cursor")
