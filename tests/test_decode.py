import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesets.base.errors import ImageLoadError
from facesets.base.pipeline import read_image
from facesets.models.decode import decode
from tests import corpus


@pytest.fixture
def photo(faces_dir: Path) -> Image.Image:
    with Image.open(faces_dir / "deepface" / "img1.jpg") as image:
        return image.convert("RGB")


def rgb(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, :, ::-1]


def test_upright_bgr(photo: Image.Image) -> None:
    data = corpus.jpeg_bytes(photo)
    decoded = decode(data)
    assert decoded.pixels.shape == (photo.height, photo.width, 3)
    assert decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height, decoded.scale) == (photo.width, photo.height, 1.0)
    with Image.open(io.BytesIO(data)) as reference:
        assert np.abs(rgb(decoded.pixels).astype(int) - np.asarray(reference.convert("RGB")).astype(int)).mean() < 1.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(photo: Image.Image, orientation: int) -> None:
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = corpus.jpeg_bytes(photo.resize((160, 120)), exif=exif.tobytes())
    decoded = decode(data)
    with Image.open(io.BytesIO(data)) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert rgb(decoded.pixels).shape == expected.shape
    assert (decoded.height, decoded.width) == expected.shape[:2]
    assert np.abs(rgb(decoded.pixels).astype(int) - expected.astype(int)).mean() < 1.0


def test_exif_orientation_is_applied(photo: Image.Image) -> None:
    upright = decode(corpus.jpeg_bytes(photo))
    rotated = decode(corpus.rotated_with_exif(photo))
    assert rotated.pixels.shape == upright.pixels.shape
    assert (rotated.width, rotated.height) == (photo.width, photo.height)
    diff = np.abs(rotated.pixels.astype(int) - upright.pixels.astype(int)).mean()
    assert diff < 3.0  # the same picture, up to JPEG re-encoding


def test_reduced_jpeg_decode(photo: Image.Image) -> None:
    data = corpus.jpeg_bytes(photo)
    reduced = decode(data, fit=400)
    assert reduced.reducible and reduced.scale < 1.0
    assert max(reduced.pixels.shape[:2]) >= 400
    assert reduced.pixels.shape[1] == round(photo.width * reduced.scale)
    assert decode(data, fit=10_000).scale == 1.0


def test_reduced_decode_keeps_orientation(photo: Image.Image) -> None:
    reduced = decode(corpus.rotated_with_exif(photo), fit=300)
    assert (reduced.width, reduced.height) == (photo.width, photo.height)
    assert reduced.pixels.shape[0] > reduced.pixels.shape[1]  # portrait, like the upright photo


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello world" * 10, "not an image"),
        (corpus.png_header_only(100_000, 100_000), "image too large: 100000x100000"),
    ],
)
def test_refused_inputs(data: bytes, reason: str) -> None:
    with pytest.raises(ImageLoadError, match=reason):
        decode(data)


def test_truncated_jpeg(photo: Image.Image) -> None:
    data = corpus.jpeg_bytes(photo)
    for cut in (len(data) // 3, len(data) - 2):
        with pytest.raises(ImageLoadError, match="truncated"):
            decode(data[:cut])
    assert decode(data + b"trailing bytes after the end marker").pixels.shape[0] == photo.height


def test_max_pixels_option(photo: Image.Image) -> None:
    with pytest.raises(ImageLoadError, match="exceeds --max-pixels"):
        decode(corpus.jpeg_bytes(photo), max_pixels=1000)


def test_mode_conversions(photo: Image.Image) -> None:
    gray8 = np.asarray(photo.convert("L"))
    sixteen = decode(corpus.sixteen_bit_png(photo))
    assert np.array_equal(sixteen.pixels[:, :, 0], gray8)
    assert np.array_equal(sixteen.pixels[:, :, 1], gray8)
    rgba = decode(corpus.rgba_png(photo))
    assert np.array_equal(rgb(rgba.pixels), np.asarray(photo))
    cmyk = decode(corpus.jpeg_bytes(photo.convert("CMYK")))
    assert cmyk.pixels.shape == (photo.height, photo.width, 3)
    assert np.abs(rgb(cmyk.pixels).astype(int) - np.asarray(photo).astype(int)).mean() < 12


def test_palette_with_transparency_composites_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    decoded = decode(buffer.getvalue())
    assert decoded.pixels[0, 0].tolist() == [255, 255, 255]


def test_heic(photo: Image.Image) -> None:
    decoded = decode(corpus.heic_bytes(photo))
    assert decoded.pixels.shape == (photo.height, photo.width, 3)
    assert np.abs(rgb(decoded.pixels).astype(int) - np.asarray(photo).astype(int)).mean() < 6


def test_unreadable_file_is_a_reason(photo: Image.Image) -> None:
    """A file without read permission gives a per-item reason (as root, the check runs with a dropped euid)."""
    folder = Path(tempfile.mkdtemp(prefix="facesets-perm-"))
    folder.chmod(0o711)
    target = folder / "secret.jpg"
    target.write_bytes(corpus.jpeg_bytes(photo))
    target.chmod(0)
    try:
        if os.geteuid() == 0:
            os.seteuid(65534)
        with pytest.raises(ImageLoadError, match="unreadable: Permission denied"):
            read_image(str(target))
    finally:
        if os.getuid() == 0:
            os.seteuid(0)
        target.unlink()
        folder.rmdir()


def test_read_error_is_a_reason() -> None:
    with pytest.raises(ImageLoadError, match="unreadable: Input/output error"):
        read_image("/proc/self/mem")
    with pytest.raises(ImageLoadError, match=r"not a regular file \(a folder\)"):
        read_image("/")


def test_only_the_supported_formats_are_opened() -> None:
    from facesets.models.decode import FORMATS, decode

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageLoadError, match="not an image"):
        decode(eps)  # an EPS named .jpg: Pillow's EPS plugin (Ghostscript) is never tried
    assert "EPS" not in FORMATS and {"JPEG", "PNG", "HEIF"} <= set(FORMATS)


def test_the_memory_guard_counts_bytes_per_pixel_and_high_depth_converts_in_blocks() -> None:
    values = (np.arange(1500 * 1000, dtype=np.int32).reshape(1500, 1000) % 65536).astype(np.int32)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="I").save(buffer, "TIFF")
    data = buffer.getvalue()
    with pytest.raises(ImageLoadError, match=r"too large to decode: 1000x1500 I needs about 10 MB"):
        decode(data, max_pixels=1_500_000)  # 4 + 3 bytes a pixel: more than 8-bit RGB at the pixel limit
    image = decode(data, max_pixels=2_000_000)
    assert image.pixels.shape == (1500, 1000, 3) and image.pixels.dtype == np.uint8
    expected = np.clip(np.rint(values.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(image.pixels[:, :, 0], expected) and np.array_equal(image.pixels[:, :, 2], expected)


def test_jpegs_decode_through_simplejpeg_to_opencvs_pixels_at_every_reduction(faces_dir: Path) -> None:
    """simplejpeg (TurboJPEG 3) is the JPEG decoder, pixel for pixel OpenCV's (what reference mode compares to);
    a JPEG it refuses (strict: damaged scan data that libjpeg only warns about) is OpenCV's to decode."""
    import cv2
    import simplejpeg

    from facesets.models.decode import jpeg_decoder

    assert jpeg_decoder() == "simplejpeg"
    files = sorted((faces_dir / "celeb5").rglob("*.jpg"))[:6]
    damaged = bytearray(files[0].read_bytes())
    scan = damaged.rfind(b"\xff\xda") + 200
    damaged[scan : scan + 40] = bytes(range(40))  # garbage inside the scan, no marker among it
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(bytes(damaged))
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    for data in [path.read_bytes() for path in files] + [bytes(damaged)]:
        for reduction, flag in flags.items():
            expected = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
            assert expected is not None
            found = decode(data, 1.0 / reduction)
            assert found.pixels.shape == expected.shape and np.array_equal(found.pixels, expected), reduction
            assert found.scale == expected.shape[1] / found.width


def test_jpegs_decode_into_lent_memory_that_later_decodes_reuse(faces_dir: Path) -> None:
    """A decode given a pool writes into a buffer lent by it (the same pixels as into fresh memory); a buffer
    given back serves the next decode of its size; a damaged JPEG that OpenCV decodes gives its buffer back at
    once."""
    from facesets.base.pipeline import Buffers

    files = sorted((faces_dir / "celeb5").rglob("*.jpg"))[:3]
    buffers = Buffers(keep=2)
    big = decode(files[0].read_bytes(), buffers=buffers)
    assert big.buffer is not None and np.shares_memory(big.pixels, np.frombuffer(big.buffer, np.uint8))
    assert np.array_equal(big.pixels, decode(files[0].read_bytes()).pixels)
    lent = big.buffer
    buffers.give(lent)
    smaller = decode(files[0].read_bytes(), 0.5, buffers=buffers)  # a quarter of the bytes: not the big one
    assert smaller.buffer is not None and smaller.buffer is not lent
    assert np.array_equal(smaller.pixels, decode(files[0].read_bytes(), 0.5).pixels)
    damaged = bytearray(files[1].read_bytes())
    scan = damaged.rfind(b"\xff\xda") + 200
    damaged[scan : scan + 40] = bytes(range(40))
    opencv = decode(bytes(damaged), buffers=buffers)
    assert opencv.buffer is None  # OpenCV's own memory; the lent buffer went back to the pool
    again = decode(files[0].read_bytes(), buffers=buffers)
    assert again.buffer is lent
    png = io.BytesIO()
    Image.open(files[2]).save(png, "PNG")
    assert decode(png.getvalue(), buffers=buffers).buffer is None  # other formats: Pillow's memory


def test_the_pool_keeps_only_its_largest_free_buffers() -> None:
    from facesets.base.pipeline import Buffers

    buffers = Buffers(keep=2)
    small, middle, large = buffers.take(10), buffers.take(20), buffers.take(30)
    for buffer in (middle, small, large):
        buffers.give(buffer)
    assert buffers.take(15) is middle  # the smallest of the two kept that fits; the smallest was let go
    fresh = buffers.take(10)  # the large one is more than twice that: it stays for a big image
    assert fresh is not small and len(fresh) == 10
    assert buffers.take(16) is large
    buffers.give(None)
    assert len(buffers.take(1)) == 1
