"""The cluster plan (``clusters.json``): what ``cluster`` decided and ``export`` applies, typed and versioned.

    format, version     "facesets.clusters", 1
    id                  the first 16 hex digits of the BLAKE3 of the rest (sorted keys)
    model, algorithm, thresholds, estimate, min_faces, caches, sets_dir
    identities          per set: its number, whether it is new, and its members (face key, cache and row,
                        source path, photo hash, Immich asset id, box, keypoints, score, short side, distance)
    dropped             what the gates left out, with the reason
    processed           the photos this plan considered
    made_against        the last plan applied to the sets when this one was made ("" for none)

A plan is a file anyone can edit, so reading it checks every field that names a file (set numbers, 64-hex photo
hashes, numeric boxes): a hand-edited or hostile plan is refused before export writes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import orjson

from ..base.errors import FaceSetError
from ..base.fsio import atomic_write_bytes
from .facesetdir import read_json

PLAN_FORMAT = "facesets.clusters"
PLAN_VERSION = 1
HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PlanFace:
    """One face of a planned set, as cluster found it in a cache."""

    key: str
    hash: str  # BLAKE3 of the photo
    source: str  # the photo's path
    bbox: tuple[float, float, float, float]
    kps: tuple[tuple[float, float], ...]
    score: float
    face_short: float
    distance: float = 0.0  # to the set's centre
    cache: str = ""
    row: int = 0
    asset_id: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanFace:
        digest, box = data["hash"], data["bbox"]
        if not isinstance(digest, str) or not HASH.match(digest):
            raise ValueError(f"photo hash {str(digest)[:80]!r}")
        if len(box) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            raise ValueError(f"box {str(box)[:80]!r}")
        if not isinstance(data["source"], str) or not isinstance(data["key"], str):
            raise ValueError("source or key")
        return cls(
            key=data["key"],
            hash=digest,
            source=data["source"],
            bbox=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            kps=tuple((float(x), float(y)) for x, y in data["kps"]),
            score=float(data["score"]),
            face_short=float(data["face_short"]),
            distance=float(data.get("distance", 0.0)),
            cache=str(data.get("cache", "")),
            row=int(data.get("row", 0)),
            asset_id=str(data.get("asset_id", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "cache": self.cache,
            "row": self.row,
            "source": self.source,
            "hash": self.hash,
            "asset_id": self.asset_id,
            "bbox": list(self.bbox),
            "kps": [list(point) for point in self.kps],
            "score": self.score,
            "face_short": self.face_short,
            "distance": self.distance,
        }


@dataclass(frozen=True)
class PlanIdentity:
    """One set the plan creates (``new``) or adds faces to."""

    set: int
    new: bool
    members: tuple[PlanFace, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanIdentity:
        number = data["set"]
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ValueError(f"set number {number!r}")
        return cls(number, bool(data["new"]), tuple(PlanFace.from_dict(face) for face in data["members"]))

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.set, "new": self.new, "members": [face.to_dict() for face in self.members]}


@dataclass(frozen=True)
class Plan:
    model: dict[str, Any]
    algorithm: str
    thresholds: dict[str, Any]
    estimate: dict[str, Any]
    min_faces: int
    caches: tuple[str, ...]
    sets_dir: str
    identities: tuple[PlanIdentity, ...]
    dropped: tuple[dict[str, Any], ...] = ()
    processed: tuple[str, ...] = ()
    made_against: str | None = ""  # None: a plan from before the field (not checked)
    id: str = field(default="", compare=False)

    def with_id(self) -> Plan:
        """The plan with its id: the BLAKE3 of everything else."""
        body = {key: value for key, value in self.to_dict().items() if key != "id"}
        digest = blake3.blake3(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        return Plan(**{**self.__dict__, "id": digest})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "algorithm": self.algorithm,
            "thresholds": self.thresholds,
            "estimate": self.estimate,
            "min_faces": self.min_faces,
            "caches": list(self.caches),
            "sets_dir": self.sets_dir,
            "identities": [identity.to_dict() for identity in self.identities],
            "dropped": list(self.dropped),
            "processed": list(self.processed),
            **({"made_against": self.made_against} if self.made_against is not None else {}),
            "id": self.id,
        }

    @property
    def faces(self) -> int:
        return sum(len(identity.members) for identity in self.identities)


def write_plan(path: Path, plan: Plan) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2))


def read_plan(path: Path) -> Plan:
    """The plan at ``path``, every field checked (see the module docstring), or :class:`FaceSetError`."""
    data = read_json(path, PLAN_FORMAT)
    for name in ("id", "identities", "thresholds", "processed", "sets_dir"):
        if name not in data:
            raise FaceSetError(f"{path} has no {name!r}: it is not a complete cluster plan; run facesets cluster again")
    try:
        return Plan(
            model=dict(data.get("model") or {}),
            algorithm=str(data.get("algorithm", "")),
            thresholds=dict(data["thresholds"]),
            estimate=dict(data.get("estimate") or {}),
            min_faces=int(data.get("min_faces", 1)),
            caches=tuple(str(cache) for cache in data.get("caches", [])),
            sets_dir=str(data["sets_dir"]),
            identities=tuple(PlanIdentity.from_dict(identity) for identity in data["identities"]),
            dropped=tuple(dict(entry) for entry in data.get("dropped", [])),
            processed=tuple(str(digest) for digest in data["processed"]),
            made_against=None if "made_against" not in data else str(data["made_against"]),
            id=str(data["id"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FaceSetError(f"{path} is not a valid cluster plan ({exc}): run facesets cluster again") from None
