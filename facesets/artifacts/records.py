"""Typed records passed between stages: images processed and faces found."""

from __future__ import annotations

from dataclasses import dataclass
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


class SourceKind(StrEnum):
    FOLDER = "folder"  # a folder given to ``queue add``
    GALLERY = "gallery"  # a gallery of ``index``
    IMMICH = "immich"  # an asset staged from an Immich server


@dataclass(frozen=True)
class Source:
    """Where an image came from, carried from the queue into the cache and the store. Stored as an object of
    its non-empty fields; a field this version does not know is dropped, an empty object is an image of an
    older cache whose source is unknown."""

    kind: str = ""  # a SourceKind value ("" unknown)
    gallery: str = ""  # GALLERY: the gallery folder
    user: str = ""  # IMMICH: the user label of the staging run
    asset_id: str = ""  # IMMICH: the asset id (validated as a UUID before it names anything)
    owner_id: str = ""  # IMMICH: the asset owner's id
    checksum: str = ""  # IMMICH: the server's SHA-1 (base64) of the original

    def to_dict(self) -> dict[str, str]:
        return {name: value for name, value in zip(_SOURCE_FIELDS, self._values(), strict=True) if value}

    def _values(self) -> tuple[str, ...]:
        return self.kind, self.gallery, self.user, self.asset_id, self.owner_id, self.checksum

    def __bool__(self) -> bool:
        return any(self._values())

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Source:
        """A source from its stored object (plain values, made text); ``None`` or empty: :data:`NO_SOURCE`."""
        if not data:
            return NO_SOURCE
        return cls(**{name: str(data[name]) for name in _SOURCE_FIELDS if data.get(name) is not None})


_SOURCE_FIELDS = ("kind", "gallery", "user", "asset_id", "owner_id", "checksum")
NO_SOURCE = Source()


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
    source: Source = NO_SOURCE

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
            data["source"] = self.source.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        """Called once per image of a cache (millions): the status is looked up, not constructed."""
        status = data["status"]
        return cls(
            path=str(data["path"]),
            content_hash=str(data["hash"]),
            size=int(data["size"]),
            status=_STATUSES.get(status) or ImageStatus(status),
            reason=str(data.get("reason", "")),
            width=int(data.get("width", 0)),
            height=int(data.get("height", 0)),
            faces=int(data.get("faces", 0)),
            source=Source.from_dict(data.get("source")),
        )


_STATUSES = {status.value: status for status in ImageStatus}
