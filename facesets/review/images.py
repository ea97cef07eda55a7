"""Face crops and photos for the review page, cut on demand from the files of the store's known images.

A request names a face or an image by its id in the store, never a path: the file opened is one the store
records for that image (:func:`facesets.review.queries.known_path`), read as a regular file of bounded size.
Crops are kept in a cache folder (one JPEG per face id, written atomically) so a page of a person opens fast
the second time; photos are shown downscaled.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from ..base.errors import ImageLoadError
from ..base.fsio import atomic_write_bytes
from ..base.pipeline import read_image
from ..base.settings import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

CROP_SIDE = 160  # pixels of a face tile
PHOTO_SIDE = 1600  # the long side a photo is shown at
THUMB_SIDE = 320  # the long side of a search result
MARGIN = 0.35  # of the box size, around a crop


def _upright(path: str) -> Image.Image:
    data = read_image(path, DEFAULT_MAX_BYTES)
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
    try:
        image = Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"))
        return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as exc:
        raise ImageLoadError(f"cannot decode: {type(exc).__name__}") from exc


def face_crop(path: str, box: tuple[float, float, float, float], cache: Path, face: int) -> bytes:
    """The JPEG of face ``face`` (its ``box`` in the upright photo at ``path``), from ``cache`` when there."""
    cached = cache / f"{face}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    image = _upright(path)
    x1, y1, x2, y2 = box
    pad = MARGIN * max(x2 - x1, y2 - y1)
    side = max(x2 - x1, y2 - y1) + 2 * pad
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    square = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    crop = image.crop(square).resize((CROP_SIDE, CROP_SIDE))
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=85)
    data = out.getvalue()
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, data)
    return data


def photo(path: str, side: int = PHOTO_SIDE) -> tuple[bytes, float]:
    """The photo at ``path`` as a JPEG of at most ``side`` pixels, and the scale it was shown at."""
    image = _upright(path)
    width, height = image.size
    scale = min(1.0, side / max(width, height))
    if scale < 1.0:
        image = image.resize((round(width * scale), round(height * scale)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue(), scale
