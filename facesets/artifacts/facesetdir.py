"""The face-set folder ``facesets_swap_ready/``: canonical sets, their manifests, the top-level manifest.

Layout::

    facesets_swap_ready/
      manifest.json                   top level (format facesets.sets v1): highest set number ever used,
                                      images already considered, plans applied, a summary per set
      faceset_001/                    a canonical identity: aligned 512x512 face crops + manifest.json
        manifest.json                 (format facesets.faceset v1): one entry per exported face
        <hash16>_<x>_<y>.jpg
      faceset_001_2015-2019/          era split of set 1 (--split-eras): derived, not canonical
      _thin/faceset_001_2010-2014/    eras below the minimum size: derived, not canonical
      _report/, report.html           the visual report

Only folders named exactly ``faceset_NNN`` are canonical. A canonical folder without a manifest (or with
images the manifest does not list) is hand-made: its images are embedded to find the identity, and it is
never changed except by adding faces. Every file here is written atomically.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..base.errors import FaceSetError
from ..base.fsio import atomic_write_bytes

SET_NAME = re.compile(r"^faceset_(\d{3,})$")
MANIFEST = "manifest.json"
SET_FORMAT = "facesets.faceset"
TOP_FORMAT = "facesets.sets"
VERSION = 1
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def face_key(content_hash: str, bbox: Any) -> str:
    """A face's identity across runs and caches: its photo's content hash and its box (0.1 px)."""
    x1, y1, x2, y2 = (float(value) for value in bbox)
    return f"{content_hash}:{x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f}"


def set_name(number: int) -> str:
    return f"faceset_{number:03d}"


@dataclass(frozen=True)
class Member:
    """One exported face: the crop file and where it came from."""

    file: str
    key: str
    source: str
    content_hash: str
    bbox: tuple[float, float, float, float]
    score: float
    face_short: float
    distance: float
    cache: str
    row: int
    asset_id: str = ""
    taken: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bbox"] = [round(value, 2) for value in self.bbox]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Member:
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        values["bbox"] = tuple(float(value) for value in data["bbox"])
        return cls(**values)


@dataclass
class FaceSet:
    """A canonical set as found on disk."""

    number: int
    folder: Path
    members: list[Member] = field(default_factory=list)
    hand_files: list[Path] = field(default_factory=list)  # images no manifest entry describes
    missing: list[str] = field(default_factory=list)  # manifest entries whose file is gone

    @property
    def name(self) -> str:
        return set_name(self.number)


@dataclass
class TopManifest:
    highest_number: int = 0
    processed: set[str] = field(default_factory=set)
    applied_plans: list[str] = field(default_factory=list)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        body = {
            "format": TOP_FORMAT,
            "version": VERSION,
            "highest_number": self.highest_number,
            "applied_plans": self.applied_plans,
            "runs": self.runs,
            "sets": self.sets,
            "processed": sorted(self.processed),
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)


def read_json(path: Path, expected_format: str) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise FaceSetError(f"cannot read {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise FaceSetError(f"{path} is not valid JSON ({exc}); restore it from a backup or remove it") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise FaceSetError(f"{path} is not a {expected_format} file; restore it from a backup or remove it")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise FaceSetError(f"{path} has version {data.get('version')!r}, newer than this facesets reads: upgrade")
    return data


def read_top(root: Path) -> TopManifest:
    path = root / MANIFEST
    if not path.exists():
        return TopManifest()
    data = read_json(path, TOP_FORMAT)
    try:
        return TopManifest(
            highest_number=int(data["highest_number"]),
            processed={str(item) for item in data["processed"]},
            applied_plans=[str(item) for item in data["applied_plans"]],
            sets={str(k): dict(v) for k, v in data["sets"].items()},
            runs=list(data["runs"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FaceSetError(f"{path} is malformed ({exc!r}); restore it from a backup or remove it") from exc


def write_top(root: Path, top: TopManifest) -> None:
    atomic_write_bytes(root / MANIFEST, top.to_bytes())


def read_sets(root: Path) -> list[FaceSet]:
    """Every canonical set under ``root``, by number."""
    if not root.exists():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        match = SET_NAME.match(entry.name)
        if match and entry.is_dir():
            found.append(read_set(int(match.group(1)), entry))
    return found


def read_set(number: int, folder: Path) -> FaceSet:
    faceset = FaceSet(number, folder)
    images = {entry.name for entry in folder.iterdir() if entry.suffix.lower() in IMAGE_SUFFIXES}
    manifest = folder / MANIFEST
    if manifest.exists():
        data = read_json(manifest, SET_FORMAT)
        try:
            members = [Member.from_dict(item) for item in data["members"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise FaceSetError(f"{manifest} is malformed ({exc!r}); restore it from a backup or remove it") from exc
        faceset.members = [member for member in members if member.file in images]
        faceset.missing = [member.file for member in members if member.file not in images]
    listed = {member.file for member in faceset.members}
    faceset.hand_files = [folder / name for name in sorted(images - listed)]
    return faceset


def write_set_manifest(faceset: FaceSet, params: dict[str, Any]) -> None:
    body = {
        "format": SET_FORMAT,
        "version": VERSION,
        "set": faceset.name,
        "params": params,
        "members": [member.to_dict() for member in sorted(faceset.members, key=lambda m: m.file)],
    }
    atomic_write_bytes(faceset.folder / MANIFEST, orjson.dumps(body, option=orjson.OPT_INDENT_2))


def highest_number(root: Path, top: TopManifest) -> int:
    """The highest set number ever used: on disk (canonical or derived) or recorded; never reused."""
    numbers = [top.highest_number]
    pattern = re.compile(r"^faceset_(\d{3,})")
    for folder in (root, root / "_thin"):
        if folder.exists():
            numbers += [int(m.group(1)) for e in folder.iterdir() if (m := pattern.match(e.name))]
    return max(numbers)
