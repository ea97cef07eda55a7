import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from facesets.cluster.evaluation import subject_face
from facesets.models.decode import decode
from facesets.models.faces import ARCFACE_TEMPLATE, FaceEngine, align, nms, similarity_transform


def analyze(engine: FaceEngine, path: Path, fit: int | None = None) -> list:
    data = path.read_bytes()
    return engine.analyze(decode(data, fit=fit), lambda scale: decode(data, scale))


def test_t1_has_six_faces(engine: FaceEngine, engine_25g: FaceEngine, t1_jpg: Path) -> None:
    for each in (engine, engine_25g):
        faces = analyze(each, t1_jpg)
        assert len(faces) == 6
        for face in faces:
            assert face.embedding.shape == (512,)
            assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
            assert face.kps.shape == (5, 2)
            assert 0.5 <= face.score <= 1.0
            width, height = face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]
            assert face.face_short == pytest.approx(min(width, height))
            assert face.norm > 1.0 and face.sharpness > 0.0


def test_blur_lowers_the_quality_signals(engine: FaceEngine, faces_dir: Path) -> None:
    photo = sorted((faces_dir / "celeb5" / "madonna").iterdir())[0]
    pixels = decode(photo.read_bytes()).pixels
    sharp = max(engine.analyze(decode(photo.read_bytes())), key=lambda face: face.area)
    size = max(3, int(sharp.face_short / 8) | 1)
    ok, blurred_bytes = cv2.imencode(".png", cv2.GaussianBlur(pixels, (size, size), 0))
    assert ok
    blurred = max(engine.analyze(decode(blurred_bytes.tobytes())), key=lambda face: face.area)
    assert blurred.sharpness < 0.5 * sharp.sharpness
    assert blurred.norm < sharp.norm


def subject(faces: list, image_shape: tuple[int, int]) -> np.ndarray:
    """InsightFace's max_num rule: the largest face, with a penalty for distance from the centre."""
    height, width = image_shape
    return faces[subject_face(np.stack([face.bbox for face in faces]), width, height)].embedding


def test_same_person_pairs_score_higher(engine: FaceEngine, faces_dir: Path, labels: dict[str, str]) -> None:
    by_person: dict[str, list[str]] = {}
    for name, person in sorted(labels.items()):
        if name.startswith("deepface/"):
            by_person.setdefault(person, []).append(name)
    chosen = {person: names[:3] for person, names in by_person.items() if len(names) >= 2}
    vectors = {}
    for names in chosen.values():
        for name in names:
            decoded = decode((faces_dir / name).read_bytes())
            faces = engine.analyze(decoded)
            assert faces, f"no face found in {name}"
            vectors[name] = subject(faces, decoded.pixels.shape[:2])
    same: list[float] = []
    different: list[float] = []
    for a, b in itertools.combinations(vectors, 2):
        (same if labels[a] == labels[b] else different).append(float(vectors[a] @ vectors[b]))
    assert len(same) >= 20 and len(different) >= 100
    assert np.mean(same) > np.mean(different) + 0.4
    assert np.percentile(same, 10) > np.percentile(different, 90)


def test_exif_rotated_photo_gives_the_same_faces(engine: FaceEngine, tmp_path: Path, faces_dir: Path) -> None:
    from PIL import Image

    from tests.corpus import jpeg_bytes, rotated_with_exif

    with Image.open(faces_dir / "deepface" / "couple.jpg") as opened:
        image = opened.convert("RGB")
    (tmp_path / "up.jpg").write_bytes(jpeg_bytes(image))
    (tmp_path / "rot.jpg").write_bytes(rotated_with_exif(image))
    upright, rotated = analyze(engine, tmp_path / "up.jpg"), analyze(engine, tmp_path / "rot.jpg")
    assert len(upright) == len(rotated) == 2
    for face in upright:
        twin = min(rotated, key=lambda other: float(np.abs(other.bbox - face.bbox).sum()))
        assert np.abs(twin.bbox - face.bbox).max() < 0.05 * face.face_short
        assert float(twin.embedding @ face.embedding) > 0.9


@pytest.mark.parametrize("which", ["engine", "engine_25g"])
def test_matches_insightface_reference(
    which: str, request: pytest.FixtureRequest, faces_dir: Path, t1_jpg: Path
) -> None:
    """Our engine reproduces InsightFace's FaceAnalysis with its default options (det sizes 128 and 640)."""
    import warnings

    from insightface.app import FaceAnalysis

    ours_engine: FaceEngine = request.getfixturevalue(which)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = FaceAnalysis(name=str(ours_engine.pack.folder), providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1)
        photos = [t1_jpg, faces_dir / "deepface" / "couple.jpg", faces_dir / "deepface" / "img40.jpg"]
        similarities = []
        for photo in photos:
            reference = app.get(cv2.imread(str(photo)))
            ours = ours_engine.analyze(decode(photo.read_bytes()))
            assert len(ours) == len(reference)
            for ref in reference:
                mine = min(ours, key=lambda face: float(np.abs(face.bbox - ref.bbox).sum()))
                tolerance = 1.0
                assert np.abs(mine.bbox - ref.bbox).max() < tolerance
                assert np.abs(mine.kps - ref.kps).max() < tolerance
                similarities.append(float(mine.embedding @ ref.normed_embedding))
    assert len(similarities) == 9
    assert np.median(similarities) >= 0.995 and min(similarities) >= 0.98  # the agreement bound


def test_similarity_transform_recovers_a_known_similarity() -> None:
    angle, scale, shift = 0.3, 2.5, np.array([10.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    matrix = similarity_transform(points, ARCFACE_TEMPLATE)
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(mapped, ARCFACE_TEMPLATE, atol=1e-9)


def test_align_puts_keypoints_on_the_template() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    kps = (ARCFACE_TEMPLATE * 2 + 50).astype(np.float32)
    for x, y in kps:
        cv2.circle(image, (round(x), round(y)), 3, (255, 255, 255), -1)
    crop = align(image, kps)
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[round(y), round(x)].max() > 100


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.95, 0.5], np.float32)
    assert nms(boxes, scores, 0.4) == [1, 2]


def test_min_face_drops_small_faces(pack, t1_jpg: Path) -> None:
    from facesets.models.faces import build_engine
    from tests.conftest import CPU

    everything = analyze(build_engine(pack, CPU), t1_jpg)
    cutoff = sorted(face.face_short for face in everything)[3]
    kept = analyze(build_engine(pack, CPU, min_face=cutoff), t1_jpg)
    assert len(kept) == sum(1 for face in everything if face.face_short >= cutoff) == 3


def test_a_fixed_input_detector_finds_a_face_that_fills_the_photo(engine: FaceEngine, faces_dir: Path) -> None:
    """scrfd500m's input is fixed at 640: at that size alone this close-up has no face above the threshold."""
    photo = faces_dir / "celeb5" / "ben_afflek" / "val_02.jpg"
    detector = engine.detector
    assert detector.fixed_size == (640, 640) and detector.det_sizes == (640,)
    assert len(detector._detect_at(decode(photo.read_bytes()).pixels, 640).scores) == 0
    faces = analyze(engine, photo)
    assert len(faces) == 1 and faces[0].face_short > 150  # found by the 128 pass, letterboxed into 640
