"""Image bytes -> BGR pixels (OpenCV's and InsightFace's channel order).

- JPEGs are decoded by libjpeg-turbo through simplejpeg (its TurboJPEG 3 build decodes a 12 MP photo in less
  than half the CPU time of OpenCV's, pixel for pixel the same), or OpenCV where simplejpeg is missing or
  refuses a file (an unusual chroma subsampling), optionally reduced by DCT scaling to 1/2, 1/4 or 1/8 when the
  caller asks for less than full resolution. Truncated JPEGs (no end-of-image marker after the last scan) are
  refused.
- Other formats go through Pillow, plus HEIC/HEIF through pillow-heif.
- EXIF orientation is applied, so faces come out upright and boxes are in the upright image's pixels.
- Palette, CMYK, gray, 16-bit and alpha images become 8-bit colour (alpha is composited on white).
- A pixel-count guard (``max_pixels``) refuses decompression bombs from the header, before decoding.
- A :class:`~facesets.base.pipeline.Buffers` pool lends the memory JPEG decodes are written into: a fresh
  array of 36-144 MB (12-48 MP) costs more in page faults than the decode itself (a 35 MP photo: 235 ms of CPU
  into fresh memory, 54 ms into reused memory).

Every per-image failure raises :class:`ImageLoadError` with a short reason; callers record it and go on.
:func:`configure_libraries` is the one place that changes Pillow's and OpenCV's global settings.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from ..base.errors import OUT_OF_MEMORY, ImageLoadError, is_out_of_memory
from ..base.pipeline import Buffers
from ..base.settings import DEFAULT_MAX_PIXELS

BGRImage = NDArray[np.uint8]

try:
    import simplejpeg as _simplejpeg
except ImportError:  # OpenCV decodes JPEGs then, more slowly
    _simplejpeg = None


_ORIENTATION_TAG = 0x0112
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_configured = threading.Lock()
_done = False


# Bytes per pixel of each Pillow mode as loaded, and of the BGR copy facesets makes of it.
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
              "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2,
              "I;16N": 2}  # fmt: skip
BGR_BYTES = 3
HIGH_DEPTH_ROWS = 1024  # rows of a 16-bit or float image converted at once (bounded scratch memory)

# The formats facesets reads. Pillow is never asked to try the others: some (EPS) would run an external program.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF", "AVIF")
_formats: tuple[str, ...] = ()  # those of FORMATS this Pillow has (set by configure_libraries)


def jpeg_decoder() -> str:
    """Which library decodes JPEGs here: "simplejpeg", or "opencv" where it is not installed."""
    return "simplejpeg" if _simplejpeg is not None else "opencv"


def configure_libraries() -> None:
    """Register the HEIC/HEIF opener, hand the decompression-bomb check to our own guard, and keep OpenCV
    single-threaded (facesets runs its own decode and inference pools; OpenCV's pool would oversubscribe).

    Pillow's ``MAX_IMAGE_PIXELS`` warns (and later fails) on big camera images that we want to read;
    :func:`decode` enforces ``max_pixels`` from the header instead. Idempotent and thread-safe.
    """
    global _done
    with _configured:
        if _done:
            return
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC then fails per image with a reason that says what to install
            pass
        Image.MAX_IMAGE_PIXELS = None
        Image.init()
        global _formats
        _formats = tuple(name for name in FORMATS if name in Image.OPEN)  # MPO is JPEG's in newer Pillows
        cv2.setNumThreads(1)
        _done = True


@dataclass(frozen=True)
class DecodedImage:
    """Upright BGR pixels, possibly reduced: ``pixels`` is ``scale`` times the original size. ``buffer`` is the
    memory lent by a :class:`Buffers` pool that ``pixels`` may live in (give it back once done with them)."""

    pixels: BGRImage
    width: int
    height: int
    scale: float
    reducible: bool
    buffer: bytearray | None = None


def decode(
    data: bytes,
    min_scale: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fit: int | None = None,
    buffers: Buffers | None = None,
) -> DecodedImage:
    """Decode ``data`` at no less than ``min_scale`` of the original size (JPEG only; others decode in full).

    ``fit`` asks instead for the smallest decode whose long side is at least ``fit`` pixels; ``buffers``
    lends the memory a JPEG is decoded into (the image's ``buffer``, to give back).
    """
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        return _decode(data, min_scale, max_pixels, fit, buffers)
    except (MemoryError, cv2.error) as exc:  # one image's failure, never the run's
        if is_out_of_memory(exc):
            raise ImageLoadError(OUT_OF_MEMORY, transient=True) from None
        raise ImageLoadError(_describe(exc)) from None


def _decode(data: bytes, min_scale: float, max_pixels: int, fit: int | None, buffers: Buffers | None) -> DecodedImage:
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"image too large: {width}x{height} = {width * height / 1e6:.0f} MP exceeds --max-pixels "
            f"{max_pixels / 1e6:.0f} MP"
        )
    # memory, not pixels, is what runs out: a 16-bit or 4-plane image costs more per pixel than 8-bit RGB
    per_pixel = MODE_BYTES.get(image.mode, 4) + BGR_BYTES
    if width * height * per_pixel > max_pixels * (3 + BGR_BYTES):
        raise ImageLoadError(
            f"image too large to decode: {width}x{height} {image.mode} needs about "
            f"{width * height * per_pixel / 1e6:,.0f} MB, more than an 8-bit RGB image of --max-pixels"
        )
    if fit is not None:
        min_scale = min(1.0, fit / max(width, height, 1))
    orientation = _orientation(image)
    buffer = None
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        pixels, buffer = _decode_jpeg(data, min_scale, width, height, buffers)
    else:
        pixels = _decode_pillow(image, min_scale)
    scale = pixels.shape[1] / width
    pixels = _orient(pixels, orientation)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(pixels, width, height, scale, image.format == "JPEG" and scale < 1.0, buffer)


def _decode_jpeg(
    data: bytes, min_scale: float, width: int, height: int, buffers: Buffers | None
) -> tuple[BGRImage, bytearray | None]:
    """The pixels, and the lent buffer they live in (None: fresh memory)."""
    if not _has_end_marker(data):
        raise ImageLoadError("truncated or damaged image (no end-of-image marker after the last scan)")
    reduction = max((r for r in (8, 4, 2) if 1.0 / r >= min_scale), default=1)
    if _simplejpeg is not None:
        # the smallest DCT scaling with at least these sizes: 1/reduction (libjpeg rounds sizes up)
        rows, columns = -(-height // reduction), -(-width // reduction)
        buffer = buffers.take(rows * columns * BGR_BYTES) if buffers is not None else None
        try:
            pixels = _simplejpeg.decode_jpeg(data, "BGR", min_height=rows, min_width=columns, buffer=buffer)
            return np.asarray(pixels, dtype=np.uint8), buffer
        except ValueError:  # strict: a warning (damaged data) or a layout TurboJPEG does not take; OpenCV decides
            if buffers is not None:
                buffers.give(buffer)
    flags = _REDUCED_FLAGS.get(reduction, cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        raise ImageLoadError("cannot decode image (damaged JPEG)")
    return np.asarray(pixels, dtype=np.uint8), None


def _has_end_marker(data: bytes) -> bool:
    """Whether an EOI marker follows the last start-of-scan (markers cannot occur inside scan data)."""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.find(b"\xff\xd9", last_scan) >= 0


def _decode_pillow(image: Image.Image, min_scale: float) -> BGRImage:
    width, height = image.size
    if image.format == "JPEG" and min_scale < 1.0:
        image.draft("RGB", (math.ceil(width * min_scale), math.ceil(height * min_scale)))
    try:
        image.load()
        rgb = np.asarray(_to_rgb(image))
    except (OSError, ValueError, SyntaxError) as exc:  # running out of memory is decode()'s to report
        raise ImageLoadError(_describe(exc)) from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])


_ORIENT_STEPS: dict[int, tuple[str, ...]] = {
    2: ("flip_h",),
    3: ("rot180",),
    4: ("flip_v",),
    5: ("transpose",),
    6: ("rot_cw",),
    7: ("transpose", "rot180"),
    8: ("rot_ccw",),
}


def _orient(pixels: BGRImage, orientation: int) -> BGRImage:
    """Apply EXIF orientation 2-8 (1 and unknown values leave the pixels as stored)."""
    out: Any = pixels
    for step in _ORIENT_STEPS.get(orientation, ()):
        if step == "flip_h":
            out = cv2.flip(out, 1)
        elif step == "flip_v":
            out = cv2.flip(out, 0)
        elif step == "rot180":
            out = cv2.rotate(out, cv2.ROTATE_180)
        elif step == "transpose":
            out = cv2.transpose(out)
        elif step == "rot_cw":
            out = cv2.rotate(out, cv2.ROTATE_90_CLOCKWISE)
        else:
            out = cv2.rotate(out, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return np.asarray(out, dtype=np.uint8)


def _open(data: bytes) -> Image.Image:
    configure_libraries()
    try:
        return Image.open(io.BytesIO(data), formats=_formats)
    except UnidentifiedImageError as exc:
        raise ImageLoadError(_unidentified_reason(data)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(_describe(exc)) from exc


def _unidentified_reason(data: bytes) -> str:
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypheif"):
        return "HEIC/HEIF image but pillow-heif is not installed (pip install pillow-heif)"
    return "not an image (unrecognised format)"


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block only costs us the orientation
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit or float gray to 8-bit RGB, a block of rows at a time (scratch memory stays small)."""
    values = np.asarray(image)
    wide = image.mode != "F" and float(values.max(initial=0)) > 255.0
    gray = np.empty(values.shape[:2], np.uint8)
    for start in range(0, len(values), HIGH_DEPTH_ROWS):
        block = values[start : start + HIGH_DEPTH_ROWS].astype(np.float32)
        if wide:
            block /= 257.0
        np.clip(np.rint(block, out=block), 0, 255, out=block)
        gray[start : start + HIGH_DEPTH_ROWS] = block
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated or damaged image ({text})"
    return f"cannot decode image ({text})"
