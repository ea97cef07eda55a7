"""Typed records passed between stages: images processed and faces found."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float32]


class ImageStatus(StrEnum):
    OK = "ok"  # decoded; one or more faces
    NO_FACE = "no_face"  # decoded; no face (above --min-face)
    DUPLICATE = "duplicate"  # same bytes as an image already in the cache: its faces are that image's
    ERROR = "error"  # could not be read or decoded: ``reason`` says why


@dataclass(frozen=True)
class ImageRecord:
    path: str
    content_hash: str
    size: int
    status: ImageStatus
    reason: str = ""
    width: int = 0
    height: int = 0
    faces: int = 0
    source: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "hash": self.content_hash,
            "size": self.size,
            "status": self.status.value,
            "width": self.width,
            "height": self.height,
            "faces": self.faces,
        }
        if self.reason:
            data["reason"] = self.reason
        if self.source:
            data["source"] = self.source
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        """Called once per image of a cache (millions): the status is looked up, not constructed."""
        status = data["status"]
        source = data.get("source")
        return cls(
            path=str(data["path"]),
            content_hash=str(data["hash"]),
            size=int(data["size"]),
            status=_STATUSES.get(status) or ImageStatus(status),
            reason=str(data.get("reason", "")),
            width=int(data.get("width", 0)),
            height=int(data.get("height", 0)),
            faces=int(data.get("faces", 0)),
            source={str(k): str(v) for k, v in source.items()} if source else {},
        )


_STATUSES = {status.value: status for status in ImageStatus}
