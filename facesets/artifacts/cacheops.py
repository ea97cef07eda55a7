"""Operations on whole face caches: fold several into one, forget images, summarise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base.fsio import exclusive_lock, remove_stale_temps, temp_pattern
from ..base.progress import ProgressFactory
from ..models.packs import PackIdentity
from .cache import (
    SCHEMA,
    CacheData,
    journal_segments,
    load_cache,
    read_npz,
    require_same_model,
    sorted_by_path,
    write_npz,
)
from .layout import lock_of
from .records import ImageRecord, ImageStatus


@dataclass
class ExtendStats:
    images_added: int = 0
    faces_added: int = 0
    deduplicated: int = 0  # same bytes as an image already in the master: kept as a duplicate record
    already_present: int = 0  # same path already in the master

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def extend_cache(master: Path, parts: Sequence[Path], progress: ProgressFactory | None = None) -> ExtendStats:
    """Fold ``parts`` into ``master`` (created if missing): dedup by content hash, aliases merged, atomic.

    Every part must come from the same recognizer as the master; a mismatch changes nothing. ``progress(total)``
    makes a bar over the parts read.
    """
    master = Path(master)
    stats = ExtendStats()
    with exclusive_lock(lock_of(master)):
        remove_stale_temps(master.parent, temp_pattern(master.name))  # a killed extend's partial file
        bar = progress(len(parts)) if progress else None
        loaded = []
        for part in parts:
            loaded.append(load_cache(part))
            if bar:
                bar.advance()
        if bar:
            bar.close()
        exists = master.exists() or bool(journal_segments(master))
        merged = load_cache(master) if exists else CacheData(identity=loaded[0].identity)
        for part, data in zip(parts, loaded, strict=True):
            require_same_model(merged.identity, data.identity, Path(part))
        for data in loaded:
            _fold_part(merged, data, stats)
        write_npz(master, sorted_by_path(merged))
        for number, segment in journal_segments(master):
            if number <= merged.journal_seq:
                segment.unlink(missing_ok=True)
    return stats


def _fold_part(merged: CacheData, part: CacheData, stats: ExtendStats) -> None:
    paths = {record.path for record in merged.images}
    embedded = {r.content_hash for r in merged.images if _embedded(r)}
    new_index = np.full(len(part.images), -1, np.int64)
    added: list[ImageRecord] = []
    for index, record in enumerate(part.images):
        if record.path in paths:
            stats.already_present += 1
            continue
        paths.add(record.path)
        if _embedded(record) and record.content_hash in embedded:
            stats.deduplicated += 1
            added.append(_as_duplicate(record))
            continue
        if _embedded(record):
            embedded.add(record.content_hash)
        new_index[index] = len(merged.images) + len(added)
        added.append(record)
    rows = new_index[part.meta["image"]] >= 0 if len(part.meta) else np.zeros(0, bool)
    meta = part.meta[rows].copy()
    meta["image"] = new_index[meta["image"]]
    merged.images.extend(added)
    merged.meta = np.concatenate([merged.meta, meta])
    merged.embeddings = np.concatenate([merged.embeddings, part.embeddings[rows]]).astype(np.float32, copy=False)
    merged.aliases.update(part.aliases)
    stats.images_added += len(added)
    stats.faces_added += int(rows.sum())


def _embedded(record: ImageRecord) -> bool:
    return record.status in (ImageStatus.OK, ImageStatus.NO_FACE)


def _as_duplicate(record: ImageRecord) -> ImageRecord:
    return ImageRecord(
        record.path,
        record.content_hash,
        record.size,
        ImageStatus.DUPLICATE,
        "",
        record.width,
        record.height,
        0,
        record.source,
    )


def cache_summary(path: Path) -> dict[str, Any]:
    """What ``facesets cache info`` prints: counts by status, faces, model, schema, pending journal. The whole
    file is read, so a damaged one (a bad CRC, members that disagree) is refused here rather than later."""
    path = Path(path)
    data = load_cache(path)
    counts = data.counts()
    return {
        "path": str(path),
        "schema": SCHEMA,
        "model": data.identity.to_dict(),
        "images": len(data.images),
        "faces": sum(record.faces for record in data.images if record.status is ImageStatus.OK),
        "with_faces": counts[ImageStatus.OK.value],
        "no_face": counts[ImageStatus.NO_FACE.value],
        "duplicates": counts[ImageStatus.DUPLICATE.value],
        "errors": counts[ImageStatus.ERROR.value],
        "pending_journal_segments": len([n for n, _ in journal_segments(path) if n > _main_seq(path)]),
        "bytes": path.stat().st_size if path.exists() else 0,
    }


def _main_seq(path: Path) -> int:
    return read_npz(path, images_only=True).journal_seq if path.exists() else 0


def purge_images(path: Path, hashes: set[str], identity: PackIdentity) -> int:
    """Remove the images with these content hashes (and their faces) from a cache, atomically.

    Returns how many image records were removed; a missing cache is left missing.
    """
    path = Path(path)
    if not hashes or not (path.exists() or journal_segments(path)):
        return 0
    with exclusive_lock(lock_of(path)):
        data = load_cache(path)
        require_same_model(identity, data.identity, path)
        keep = np.array([record.content_hash not in hashes for record in data.images], dtype=bool)
        new_index = np.cumsum(keep) - 1
        rows = keep[data.meta["image"]] if len(data.meta) else np.zeros(0, bool)
        meta = data.meta[rows].copy()
        meta["image"] = new_index[meta["image"]]
        kept = CacheData(
            identity=data.identity,
            images=[record for record, flag in zip(data.images, keep, strict=True) if flag],
            meta=meta,
            embeddings=data.embeddings[rows],
            aliases={k: v for k, v in data.aliases.items()},
            journal_seq=data.journal_seq,
        )
        write_npz(path, kept)
        for number, segment in journal_segments(path):
            if number <= kept.journal_seq:
                segment.unlink(missing_ok=True)
        return int((~keep).sum())
