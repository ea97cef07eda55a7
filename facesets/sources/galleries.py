"""Local galleries: discovery of gallery folders and listing of their image files.

A gallery is a folder that holds ``index.json`` and a ``tn/`` folder; its images are the image files in the
folder itself (``tn/`` holds thumbnails and is never indexed, nor is any other subfolder). A target may be a
gallery, a chunk (its children are galleries), a root (its children are chunks) or any other folder: all
four are walked the same way, and galleries are found at any depth. Symlink loops, unreadable folders and
files that vanish are reported to ``on_skip`` and skipped; a malformed ``index.json`` is reported and the
gallery is indexed with empty metadata.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..artifacts.queue import IMAGE_EXTENSIONS
from ..base.errors import ConfigError
from ..base.paths import valid_utf8

SkipHandler = Callable[[str, str], None]
_SUFFIXES = {suffix.lstrip("."): True for suffix in IMAGE_EXTENSIONS}


@dataclass(frozen=True)
class Gallery:
    path: Path
    files: dict[str, int]  # image file name -> size in bytes
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def is_gallery(folder: Path) -> bool:
    return (folder / "index.json").is_file() and (folder / "tn").is_dir()


def check_targets(targets: Sequence[Path]) -> list[Path]:
    """Absolute target folders, or :class:`ConfigError` for a missing target or one that is a file."""
    resolved = []
    for target in targets:
        if not target.exists():
            raise ConfigError(f"target {target} does not exist")
        if not target.is_dir():
            raise ConfigError(f"target {target} is a file; --target takes a gallery, chunk, root or any folder")
        resolved.append(target.absolute())
    return resolved


def gallery_folders(targets: Sequence[Path], on_skip: SkipHandler) -> Iterator[Path]:
    """Every gallery folder under ``targets``, each once, in sorted order per target."""
    seen: set[tuple[int, int]] = set()
    for target in targets:
        stack = [target]
        while stack:
            folder = stack.pop()
            try:
                info = folder.stat()
            except OSError as exc:
                on_skip(str(folder), exc.strerror or str(exc))
                continue
            if not valid_utf8(str(folder)):
                on_skip(os.fsencode(folder).decode("utf-8", "backslashreplace"), "folder name is not valid UTF-8")
                continue
            if (info.st_dev, info.st_ino) in seen:
                on_skip(str(folder), "folder already visited (symlink loop or repeated target)")
                continue
            seen.add((info.st_dev, info.st_ino))
            try:
                gallery = is_gallery(folder)
            except OSError as exc:  # Path.is_file() raises on EACCES
                on_skip(str(folder), exc.strerror or str(exc))
                continue
            if gallery:
                yield folder
                continue
            stack.extend(reversed(_subfolders(folder, on_skip)))


def _subfolders(folder: Path, on_skip: SkipHandler) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries if _is_dir(entry))
    except OSError as exc:
        on_skip(str(folder), exc.strerror or str(exc))
        return []
    return [folder / name for name in names]


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def list_gallery(folder: Path, on_skip: SkipHandler, with_metadata: bool = True) -> Gallery:
    """The gallery's image files with their sizes (one stat each, nothing read) and, if asked, its metadata.

    Files are in directory order: callers that need an order sort (the tree walk is the hot path)."""
    files: dict[str, int] = {}
    try:
        with os.scandir(folder) as entries:
            candidates = [entry for entry in entries if _SUFFIXES.get(entry.name.rpartition(".")[2].lower(), False)]
    except OSError as exc:
        on_skip(str(folder), exc.strerror or str(exc))
        return Gallery(folder, {})
    for entry in candidates:
        if not entry.name.isascii() and not valid_utf8(entry.name):
            on_skip(os.fsencode(entry.path).decode("utf-8", "backslashreplace"), "file name is not valid UTF-8")
            continue
        try:
            if entry.is_dir():
                continue
            info = entry.stat()
        except OSError as exc:
            on_skip(entry.path, f"vanished or unreadable: {exc.strerror or exc}")
            continue
        files[entry.name] = info.st_size
    return Gallery(folder, files, read_metadata(folder, on_skip) if with_metadata else {})


def gallery_totals(folder: Path, on_skip: SkipHandler) -> tuple[int, int]:
    """Image-file count and total bytes of a gallery: what the gallery skip compares (the hottest loop)."""
    count = total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if _SUFFIXES.get(entry.name.rpartition(".")[2].lower(), False) and (
                    entry.name.isascii() or valid_utf8(entry.name)
                ):
                    try:
                        if not entry.is_dir():
                            total += entry.stat().st_size
                            count += 1
                    except OSError:
                        continue  # vanished: the listing of a gallery that needs work reports it
    except OSError as exc:
        on_skip(str(folder), exc.strerror or str(exc))
    return count, total


def read_metadata(folder: Path, on_skip: SkipHandler) -> dict[str, Any]:
    """The gallery's ``index.json`` as a dict; a malformed one is reported and read as empty."""
    path = folder / "index.json"
    try:
        value = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        on_skip(str(path), f"malformed index.json ({exc}); gallery indexed with empty metadata")
        return {}
    except OSError as exc:
        on_skip(str(path), f"unreadable index.json ({exc.strerror or exc}); gallery indexed with empty metadata")
        return {}
    if not isinstance(value, dict):
        on_skip(str(path), "index.json is not a JSON object; gallery indexed with empty metadata")
        return {}
    return value
