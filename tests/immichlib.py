"""The synthetic Immich library the staging tests run against, built from the real photos in ../shared.

Face boxes are real: the 500m detector's boxes, expressed (as Immich does) in a preview's pixel space, here
half the original's size, so a stager that forgets to scale them back drops faces it should keep.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import numpy as np
from PIL import Image

from facesets.artifacts.cache import CacheWriter
from facesets.artifacts.records import ImageRecord, ImageStatus, Source, SourceKind
from facesets.models.decode import decode
from facesets.models.faces import FaceEngine
from facesets.models.packs import PackIdentity
from tests.fakeimmich import FakeAsset, FakeUser, fake_uuid

MIN_FACE = 90
KEY = "test-key-8c1f0e5b7a9d4e2f"
PETER = FakeUser(fake_uuid(7001), "peter", KEY)
NIC = FakeUser(fake_uuid(7002), "nic", "test-key-for-nic-5d2c")
HOSTILE = [
    "/photos/2019/beach.jpg",
    "../../../../etc/evil.jpg",
    "C:\\Users\\bob\\..\\..\\Windows\\system.jpg",
    "/photos/nul\x00byte.jpg",
    "/photos/" + "n" * 300 + ".jpg",
    "/photos/Case.jpg",
    "/photos/case.jpg",
    "/photos/CON.jpg",
]
# Where each of HOSTILE lands under <staging>/peter/ (see facesets.sources.immich.paths).
EXPECTED_PATHS = [
    "photos/2019/beach.jpg",
    "etc/evil.jpg",
    "Users/bob/Windows/system.jpg",
    "photos/nul_byte.jpg",
    "photos/" + "n" * 116 + ".jpg",
    "photos/Case.jpg",
    "photos/case~{tag}.jpg",
    "photos/_CON.jpg",
]


@dataclass
class Library:
    assets: list[FakeAsset]
    staged: list[FakeAsset]  # in listing order, the assets that end up staged
    expected: dict[str, int]
    cached_hash: str  # BLAKE3 of the photo an old cache already has
    cached_checksum: str  # SHA-1 (base64) an old cache records for an Immich photo
    relative: dict[str, str] = field(default_factory=dict)  # staged asset id -> relative path


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode("ascii")


def face_boxes(engine: FaceEngine, data: bytes) -> tuple[list[tuple[int, int, int, int]], int, int, float]:
    """Boxes in the half-size preview's pixels, the original's size, and the biggest face's short side."""
    image = decode(data)
    found = engine.detector.detect(image.pixels)
    boxes = found.boxes / image.scale
    height, width = image.pixels.shape[0] / image.scale, image.pixels.shape[1] / image.scale
    preview = [tuple(round(float(v) / 2) for v in box) for box in boxes]
    biggest = float(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).max()) if len(boxes) else 0.0
    return preview, round(width), round(height), biggest  # type: ignore[return-value]


def blank_jpeg(shade: int) -> bytes:
    pixels = np.full((240, 320, 3), shade, np.uint8)
    pixels[:, :, 1] = np.linspace(0, 255, 320, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build_library(faces_dir: Path, engine: FaceEngine) -> Library:
    numbers = iter(range(1, 10_000))

    def asset(path: str, data: bytes, **options: object) -> FakeAsset:
        return FakeAsset(fake_uuid(next(numbers)), path, data, **options)  # type: ignore[arg-type]

    def photo(path: str, data: bytes, **options: object) -> FakeAsset:
        boxes, width, height, _ = face_boxes(engine, data)
        preview = (width // 2, height // 2)
        return asset(path, data, faces=boxes, preview=preview, size=(width, height), **options)

    big: list[bytes] = []
    small: list[bytes] = []
    for file in sorted((faces_dir / "deepface").glob("img*.jpg")):
        data = file.read_bytes()
        if face_boxes(engine, data)[3] >= 1.5 * MIN_FACE and len(big) < 12:
            big.append(data)
    for file in sorted((faces_dir / "celeb5").glob("*/train_0*.jpg")):
        data = file.read_bytes()
        if 0 < face_boxes(engine, data)[3] < MIN_FACE and len(small) < 3:
            small.append(data)
    assert len(big) == 12 and len(small) == 3, "the shared photos changed: pick other ones"

    staged = [photo(path, data) for path, data in zip(HOSTILE, big, strict=False)]
    cached = photo("/photos/cached.jpg", big[8])  # its bytes are in an old cache: deduped after download
    by_cache_checksum = photo("/photos/known.jpg", big[9])  # its SHA-1 is in an old cache: never downloaded
    assets = [
        staged[0],
        asset("/videos/clip.mp4", b"\x00\x00\x00\x18ftypmp42video", type="VIDEO"),
        staged[1],
        photo("/photos/copy-of-beach.jpg", big[0]),  # same bytes (checksum) as staged[0]
        asset("/photos/blank1.jpg", blank_jpeg(40)),  # no face
        staged[2],
        photo("/library/thumbs/ab/cd/0000-preview.jpeg", big[10]),  # Immich's own preview, indexed by mistake
        staged[3],
        photo("/photos/no-checksum-copy.jpg", big[2], checksum=""),  # no checksum: a BLAKE3 twin of staged[2]
        *[photo(f"/small/s{index}.jpg", data) for index, data in enumerate(small)],
        staged[4],
        asset("/videos/clip2.mov", b"\x00\x00\x00\x14ftypqt  video", type="VIDEO"),
        cached,
        asset("/music/song.mp3", b"ID3audio", type="AUDIO"),
        staged[5],
        photo("/photos/trashed.jpg", big[11], is_trashed=True),
        staged[6],
        photo("/photos/offline.jpg", big[11], is_offline=True),
        by_cache_checksum,
        photo("/photos/copy-of-case.jpg", big[5]),  # same checksum as staged[5]
        asset("/photos/blank2.jpg", blank_jpeg(200)),
        photo("/x/lib/a1b2-thumbnail.webp", big[10]),
        staged[7],
    ]
    expected = {
        "total_assets_seen": len(assets),
        "staged_count": 8,
        "deduped_against_existing": 1,
        "deduped_against_staged": 1,
        "skipped_no_big_face": 3,
        "skipped_no_faces": 2,
        "skipped_download_error": 0,
        "already_done": 0,
        "skipped_by_checksum": 3,
        "skipped_generated": 2,
        "skipped_video": 2,
        "skipped_not_image": 1,
        "skipped_trashed": 1,
        "skipped_offline": 1,
        "skipped_faces_error": 0,
        "skipped_gone": 0,
        "skipped_unsafe_path": 0,
        "adopted": 0,
        "would_stage": 0,
    }
    relative = {
        item.id: path.format(tag=item.id.replace("-", "")[:8])
        for item, path in zip(staged, EXPECTED_PATHS, strict=True)
    }
    return Library(assets, staged, expected, blake3.blake3(big[8]).hexdigest(), sha1_b64(big[9]), relative=relative)


def write_old_cache(path: Path, identity: PackIdentity, library: Library) -> None:
    """A cache from an earlier run: one photo by content hash, one Immich photo by its checksum."""
    writer = CacheWriter(path, identity)
    writer.add(ImageRecord("/old/cached.jpg", library.cached_hash, 10, ImageStatus.NO_FACE), [])
    source = Source(SourceKind.IMMICH, asset_id="old", checksum=library.cached_checksum)
    writer.add(ImageRecord("/old/known.jpg", "f" * 64, 10, ImageStatus.NO_FACE, source=source), [])
    writer.close()
