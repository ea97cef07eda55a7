"""``facesets backfill``: stat only, no reads, no models.

Fills missing file sizes and the file count and total bytes of galleries already indexed, so that the skip
layers of the next ``facesets index`` work. A gallery gets its count and bytes only when every listed file is
already indexed, so the gallery skip never hides a file that was never read.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..artifacts.indexstate import IndexState
from ..artifacts.layout import INDEX_STATE
from ..base.errors import ConfigError
from ..sources.galleries import Gallery, check_targets, gallery_folders, list_gallery

log = logging.getLogger(__name__)


@dataclass
class BackfillStats:
    galleries_seen: int = 0
    galleries_not_indexed: int = 0
    galleries_filled: int = 0
    galleries_incomplete: int = 0
    files_stated: int = 0
    file_sizes_filled: int = 0
    walk_skips: int = 0
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run_backfill(targets: Sequence[Path], caches: Path, concurrency: int = 16) -> BackfillStats:
    """Stat only (no reads, no models): fill missing file sizes and gallery count/bytes of indexed galleries.

    A gallery gets its count and bytes only when every listed file is already indexed, so the gallery
    skip of the next ``index`` never hides a file that was never read.
    """
    started = time.monotonic()
    folders_targets = check_targets(list(targets))
    stats = BackfillStats()

    def skip(path: str, reason: str) -> None:
        stats.walk_skips += 1
        log.warning("skipping %s: %s", path, reason)

    state_path = caches / INDEX_STATE
    if not state_path.exists():
        raise ConfigError(f"no index state at {state_path}: run `facesets index` first (or pass --caches)")
    state = IndexState(state_path)
    try:
        folders = list(gallery_folders(folders_targets, skip))
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            listings = pool.map(lambda folder: list_gallery(folder, skip), folders)
            state.begin()
            for gallery in listings:
                _backfill_gallery(state, gallery, stats)
            state.commit()
    except sqlite3.DatabaseError as exc:
        raise state.damaged(exc) from None
    finally:
        state.close()
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


def _backfill_gallery(state: IndexState, gallery: Gallery, stats: BackfillStats) -> None:
    stats.galleries_seen += 1
    stats.files_stated += gallery.file_count
    row = state.gallery(str(gallery.path))
    if row is None:
        stats.galleries_not_indexed += 1
        return
    known = state.known_files(row.id)
    for name, size in gallery.files.items():
        entry = known.get(name)
        if entry is not None and entry.file_size is None:
            state.set_file_size(row.id, name, size)
            stats.file_sizes_filled += 1
    complete = all(known.get(name) is not None and known[name].image_hash for name in gallery.files)
    if not complete:
        stats.galleries_incomplete += 1
    elif row.file_count is None or row.total_bytes is None:
        state.set_gallery_stats(row.id, gallery.file_count, gallery.total_bytes, gallery.metadata, time.time())
        stats.galleries_filled += 1
