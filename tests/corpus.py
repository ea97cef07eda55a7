"""The bad-input corpus, made by the tests from real photos."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (no pixel data worth the name)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def rotated_with_exif(image: Image.Image) -> bytes:
    """Pixels stored rotated 90 degrees clockwise, with EXIF orientation 8 so viewers show them upright."""
    stored = image.transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    return jpeg_bytes(stored, exif=exif.tobytes())


def sixteen_bit_png(image: Image.Image) -> bytes:
    gray = np.asarray(image.convert("L")).astype(np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    return buffer.getvalue()


def rgba_png(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    return buffer.getvalue()


def heic_bytes(image: Image.Image) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, "HEIF", quality=90)
    return buffer.getvalue()


def build(folder: Path, source: Path) -> dict[str, str]:
    """Write the corpus into ``folder``; return file name -> expected status ('ok' or 'error')."""
    with Image.open(source) as opened:
        image = opened.convert("RGB")
    good = jpeg_bytes(image)
    files: dict[str, tuple[bytes, str]] = {
        "upright.jpg": (good, "ok"),
        "truncated.jpg": (good[: len(good) // 3], "error"),
        "zero.jpg": (b"", "error"),
        "text.jpg": (b"this is not an image\n" * 10, "error"),
        "huge-header.png": (png_header_only(100_000, 100_000), "error"),
        "photo.heic": (heic_bytes(image), "ok"),
        "exif-rotated.jpg": (rotated_with_exif(image), "ok"),
        "cmyk.jpg": (jpeg_bytes(image.convert("CMYK")), "ok"),
        "gray.jpg": (jpeg_bytes(image.convert("L")), "ok"),
        "sixteen-bit.png": (sixteen_bit_png(image), "ok"),
        "rgba.png": (rgba_png(image), "ok"),
        "my photos/Zoë café.jpg": (jpeg_bytes(image, subsampling=0), "ok"),
    }
    expected = {}
    for name, (data, status) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[name] = status
    return expected
