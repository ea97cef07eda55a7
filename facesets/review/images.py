"""Face crops and photos for the review page, cut on demand from the files of the store's known images.

A request names a face or an image by its id in the store, never a path: the file opened is one the store
records for that image (:func:`facesets.review.queries.known_path`), read as a regular file of bounded size and
decoded by the pipeline's own decoder (its memory guards, the formats it allows, HEIC, EXIF orientation). A
face is shown as the 5-point aligned crop export writes (:func:`facesets.models.faces.align`), kept in a cache
folder (one JPEG per face id, written atomically) so that a page opens fast the second time; photos are shown
downscaled.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..base.errors import ImageLoadError
from ..base.fsio import atomic_write_bytes
from ..base.pipeline import read_image
from ..base.settings import DEFAULT_MAX_BYTES
from ..models.decode import DecodedImage, decode
from ..models.faces import align

CROP_SIDE = 160  # pixels of a face tile
PHOTO_SIDE = 1600  # the long side a photo is shown at
THUMB_SIDE = 320  # the long side of a search result
QUALITY = 85


def _decoded(path: str, fit: int | None = None) -> DecodedImage:
    return decode(read_image(path, DEFAULT_MAX_BYTES), fit=fit)


def _jpeg(pixels: np.ndarray) -> bytes:
    done, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not done:
        raise ImageLoadError("cannot encode the crop")
    return bytes(encoded.tobytes())


def face_crop(path: str, keypoints: list[float], cache: Path, face: int) -> bytes:
    """The aligned crop of face ``face`` (its 5 ``keypoints`` in the upright photo at ``path``), from ``cache``
    when there."""
    cached = cache / f"{face}.jpg"
    if cached.is_file():
        return cached.read_bytes()
    image = _decoded(path)
    points = np.asarray(keypoints, np.float32).reshape(5, 2) * image.scale
    data = _jpeg(align(image.pixels, points, CROP_SIDE))
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, data)
    return data


def photo(path: str, side: int = PHOTO_SIDE) -> tuple[bytes, float]:
    """The photo at ``path`` as a JPEG of at most ``side`` pixels, and its scale to the original's pixels."""
    image = _decoded(path, fit=side)
    height, width = image.pixels.shape[:2]
    shrink = min(1.0, side / max(width, height))
    pixels: np.ndarray = image.pixels
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    return _jpeg(pixels), pixels.shape[1] / image.width
