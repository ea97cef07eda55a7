import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesets.base.errors import ModelPackError
from facesets.models.clip import CLIP_ROOT_ENV, clip_identity, resolve_clip
from facesets.models.clipvisual import ClipVisual
from facesets.models.decode import decode
from tests import clipmodel
from tests.conftest import CPU


@pytest.fixture
def tiny_clip(tmp_path: Path) -> Path:
    return clipmodel.build(tmp_path / "tiny-clip")


def rgb_of(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def test_missing_model_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError) as info:
        resolve_clip(None, "ViT-B-32__openai", env={CLIP_ROOT_ENV: str(tmp_path)})
    message = str(info.value)
    assert str(tmp_path / "ViT-B-32__openai" / "visual" / "model.onnx") in message
    assert str(Path("~/.cache/facesets/clip").expanduser() / "ViT-B-32__openai") in message
    assert "immich-app/ViT-B-32__openai" in message and "--no-clip" not in message  # index adds that hint


def test_resolve_by_name_under_root(tiny_clip: Path) -> None:
    assert resolve_clip(None, "tiny-clip", env={CLIP_ROOT_ENV: str(tiny_clip.parent)}) == tiny_clip
    assert resolve_clip(tiny_clip) == tiny_clip


def test_vectors_are_unit_length_and_match_a_numpy_forward(tiny_clip: Path, sample_photos: list[Path]) -> None:
    visual = ClipVisual(tiny_clip, CPU)
    images = [decode(path.read_bytes()) for path in sample_photos]
    vectors = visual.embed(images)
    assert vectors.shape == (4, clipmodel.DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    for path, vector in zip(sample_photos, vectors, strict=True):
        assert np.allclose(vector, clipmodel.reference_vector(rgb_of(path)), atol=1e-5)
    one_at_a_time = np.concatenate([visual.embed([image]) for image in images])
    assert np.allclose(one_at_a_time, vectors, atol=1e-6)


def test_exif_orientation_is_applied_before_clip(tiny_clip: Path, sample_photos: list[Path]) -> None:
    from tests.corpus import jpeg_bytes, rotated_with_exif

    visual = ClipVisual(tiny_clip, CPU)
    photo = rgb_of(sample_photos[0])
    upright = visual.embed([decode(jpeg_bytes(photo))])[0]
    rotated = visual.embed([decode(rotated_with_exif(photo))])[0]
    assert float(upright @ rotated) > 0.99


def test_preprocessing_shapes(tmp_path: Path) -> None:
    squash = ClipVisual(clipmodel.build(tmp_path / "squash", resize_mode="squash"), CPU)
    tall = np.zeros((90, 30, 3), np.uint8)
    assert squash.preprocess(tall).shape == (3, clipmodel.SIZE, clipmodel.SIZE)
    shortest = ClipVisual(clipmodel.build(tmp_path / "shortest"), CPU)
    assert shortest.preprocess(tall).shape == (3, clipmodel.SIZE, clipmodel.SIZE)


def test_bad_preprocess_config(tmp_path: Path) -> None:
    folder = clipmodel.build(tmp_path / "bad")
    (folder / "visual" / "preprocess_cfg.json").write_text('{"size": 32, "mean": [0, 0, 0]}')
    with pytest.raises(ModelPackError, match="cannot read CLIP preprocessing config"):
        ClipVisual(folder, CPU)


def test_identity_follows_the_weights(tmp_path: Path) -> None:
    one, same, other = (clipmodel.build(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert clip_identity(one).visual_blake3 == clip_identity(same).visual_blake3
    assert clip_identity(one).visual_blake3 != clip_identity(other).visual_blake3
    assert clip_identity(one).name == "a"


def test_png_and_jpeg_of_the_same_pixels_agree(tiny_clip: Path, sample_photos: list[Path]) -> None:
    visual = ClipVisual(tiny_clip, CPU)
    photo = rgb_of(sample_photos[1])
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    from_png = visual.embed([decode(buffer.getvalue())])[0]
    assert np.allclose(from_png, clipmodel.reference_vector(photo), atol=1e-5)
