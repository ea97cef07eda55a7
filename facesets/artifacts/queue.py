"""``queue.json``: the work list every source writes and the embed worker reads.

Format (version 1)::

    {
      "format": "facesets.queue",
      "version": 1,
      "entries": [
        {
          "path": "/mnt/d/photos/2019/a.jpg",     # the Linux (WSL) path: the file's canonical name
          "windows_path": "D:\\\\photos\\\\2019\\\\a.jpg", # its Windows form, or null when it has none
          "content_hash": "9f2c...",               # BLAKE3 hex of the bytes when queued ("" if unknown)
          "size": 183422,                          # bytes when queued
          "source": {"kind": "folder"}             # the source's ids: gallery, immich asset id, user...
        }
      ]
    }

Appending is atomic and locked (:func:`append_entries`): an entry whose path is already queued is not
added again. Readers refuse other formats and newer versions with a message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..base.errors import ImageLoadError, QueueError
from ..base.fsio import atomic_write_json, exclusive_lock, remove_stale_temps, temp_pattern
from ..base.paths import to_windows, valid_utf8
from ..base.pipeline import hash_file
from ..base.progress import ProgressFactory
from .layout import lock_of
from .records import NO_SOURCE, Source, SourceKind

FORMAT = "facesets.queue"
VERSION = 1
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".heic", ".heif", ".bmp", ".tif", ".tiff", ".gif", ".avif"}
)


@dataclass(frozen=True)
class QueueEntry:
    path: str
    windows_path: str | None
    content_hash: str
    size: int
    source: Source = NO_SOURCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "windows_path": self.windows_path,
            "content_hash": self.content_hash,
            "size": self.size,
            "source": self.source.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueEntry:
        """An entry, every field checked (a queue is a file anyone can edit): ``ValueError`` names the bad one."""
        if not isinstance(data, dict):
            raise ValueError("an entry is not an object")
        path, windows = data.get("path"), data.get("windows_path")
        if not isinstance(path, str) or not path or "\0" in path:
            raise ValueError(f"path {path!r} is not a file name")
        if windows is not None and (not isinstance(windows, str) or "\0" in windows):
            raise ValueError(f"windows_path {windows!r} is not a file name")
        digest, size = data.get("content_hash") or "", data.get("size") or 0
        if not isinstance(digest, str):
            raise ValueError(f"content_hash {digest!r} is not text")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size {size!r} is not a byte count")
        source = data.get("source") or {}
        if not isinstance(source, dict) or not all(isinstance(v, str | int | float | bool) for v in source.values()):
            raise ValueError(f"source {source!r} is not an object of plain values")
        return cls(path, windows, digest, size, Source.from_dict(source))

    def local_path(self) -> str:
        """The name to open on this machine: the Windows form on Windows when there is one."""
        if os.name == "nt" and self.windows_path:
            return self.windows_path
        return self.path


def read_queue(path: Path) -> list[QueueEntry]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise QueueError(f"queue {path} does not exist: create it with `facesets queue add` or a source stage") from exc
    except OSError as exc:
        raise QueueError(f"cannot read queue {path}: {exc.strerror}") from exc
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise QueueError(f"queue {path} is not valid JSON ({exc}); it was left untouched") from exc
    return _parse(path, document)


def _parse(path: Path, document: Any) -> list[QueueEntry]:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise QueueError(f'{path} is not a facesets queue (no "format": "{FORMAT}")')
    version = document.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise QueueError(
            f"queue {path} has version {version!r}; this facesets reads version {VERSION}: upgrade facesets"
        )
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise QueueError(f"queue {path} has no list of entries")
    parsed = []
    for number, item in enumerate(entries, 1):
        try:
            parsed.append(QueueEntry.from_dict(item))
        except ValueError as exc:
            raise QueueError(f"queue {path}: entry {number} is malformed ({exc}); nothing was changed") from None
    return parsed


def write_queue(path: Path, entries: Sequence[QueueEntry]) -> None:
    document = {"format": FORMAT, "version": VERSION, "entries": [entry.to_dict() for entry in entries]}
    atomic_write_json(Path(path), document)


def append_entries(path: Path, entries: Iterable[QueueEntry]) -> int:
    """Add entries whose path is not queued yet, atomically and under a lock; return how many were added."""
    path = Path(path)
    with exclusive_lock(lock_of(path)):
        remove_stale_temps(path.parent, temp_pattern(path.name))  # left by a killed write; we hold the lock
        existing = read_queue(path) if path.exists() else []
        known = {entry.path for entry in existing}
        added = []
        for entry in entries:
            if entry.path not in known:
                known.add(entry.path)
                added.append(entry)
        if added or not path.exists():
            write_queue(path, existing + added)
        return len(added)


def iter_image_files(folder: Path, on_skip: Callable[[Path, str], None]) -> Iterator[Path]:
    """Image files under ``folder`` by extension, in sorted order; unreadable folders are reported and skipped."""
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            stat = current.stat()
            if (stat.st_dev, stat.st_ino) in seen:
                on_skip(current, "folder already visited (symlink loop)")
                continue
            seen.add((stat.st_dev, stat.st_ino))
            children = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            on_skip(current, exc.strerror or str(exc))
            continue
        for child in children:
            if not valid_utf8(child.name):  # a queue is UTF-8 JSON: such a name cannot be written into it
                on_skip(
                    Path(os.fsencode(child.path).decode("utf-8", "backslashreplace")), "file name is not valid UTF-8"
                )
                continue
            try:
                if child.is_dir():
                    stack.append(Path(child.path))
                elif child.is_file() and Path(child.name).suffix.lower() in IMAGE_EXTENSIONS:
                    yield Path(child.path)
            except OSError as exc:
                on_skip(Path(child.path), exc.strerror or str(exc))
        stack.sort(reverse=True)


@dataclass
class ScanResult:
    entries: list[QueueEntry]
    skipped: list[tuple[str, str]]


def scan_folders(folders: Sequence[Path], workers: int = 4, progress: ProgressFactory | None = None) -> ScanResult:
    """Queue entries for every image file under ``folders``: stat + BLAKE3, hashed in parallel."""
    skipped: list[tuple[str, str]] = []
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise QueueError(f"{folder} is not a folder")
        files.extend(iter_image_files(folder, lambda p, why: skipped.append((str(p), why))))

    def entry_for(file: Path) -> QueueEntry | None:
        absolute = str(file.absolute())
        try:
            digest, size = hash_file(file)
        except ImageLoadError as exc:
            skipped.append((absolute, exc.reason))
            return None
        return QueueEntry(absolute, to_windows(absolute), digest, size, Source(SourceKind.FOLDER))

    bar = progress(len(files)) if progress else None
    entries = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for entry in pool.map(entry_for, files):
            if entry is not None:
                entries.append(entry)
            if bar:
                bar.advance()
    if bar:
        bar.close()
    return ScanResult(entries, skipped)
