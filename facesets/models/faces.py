"""The face engine: SCRFD detection, 5-point alignment to 112x112, ArcFace-style embeddings.

This follows InsightFace's reference implementation (``SCRFD.detect``, ``face_align.norm_crop``,
``ArcFaceONNX``, on BGR pixels) on sessions we create. Detectors with a dynamic input run at every size
of ``det_sizes`` (InsightFace 2's default is 128 and 640: the small pass finds faces that fill the photo)
and their input is padded to the square, as in the reference, or with ``square=False`` only to a multiple
of 32 (less work on landscape and portrait photos); fixed-input detectors run at their own size, as the
reference does, and only when that finds no face at the smaller sizes (the photo shrunk and padded to their
input), which finds the faces that fill a photo.

When the caller hands over a reduced decode, the alignment crop of each face is cut from a decode fine
enough for it (:data:`ALIGN_MIN_FACE_PX`), so a small face in a big photo still gets full-resolution
pixels. Recognizer inputs are batched when the model accepts a batch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..base.settings import DEFAULT_DET_SIZES
from .decode import BGRImage, DecodedImage
from .packs import ModelPack
from .runtime import RuntimeOptions, create_session

FloatArray = NDArray[np.float32]

# A reduced decode serves a face's crop when the face's short side has at least this many pixels in it;
# otherwise the face is cut from a finer decode (the original when the face is smaller than this).
ALIGN_MIN_FACE_PX = 112.0
NMS_THRESHOLD = 0.4
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Face:
    """One detected face, in the upright original image's pixel coordinates."""

    bbox: FloatArray  # x1, y1, x2, y2
    kps: FloatArray  # 5 x 2: eyes, nose, mouth corners
    score: float
    face_short: float
    embedding: FloatArray  # L2-normalised
    norm: float = math.nan  # the recognizer's raw embedding norm: low on poor crops
    sharpness: float = math.nan  # variance of the aligned crop's Laplacian: low on blurred or upscaled faces

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


@dataclass(frozen=True)
class Detection:
    boxes: FloatArray  # N x 4
    scores: FloatArray  # N
    kps: FloatArray  # N x 5 x 2


class Detector:
    """SCRFD with 5 keypoints (3 strides, 2 anchors), decoded as InsightFace does."""

    strides = (8, 16, 32)
    anchors = 2

    def __init__(
        self, session: Any, threshold: float, det_sizes: tuple[int, ...] = DEFAULT_DET_SIZES, square: bool = True
    ) -> None:
        self.session = session
        self.threshold = threshold
        self.square = square
        inputs = session.get_inputs()[0]
        self.input_name = inputs.name
        height, width = inputs.shape[2], inputs.shape[3]
        self.fixed_size = (width, height) if isinstance(width, int) and isinstance(height, int) else None
        self.det_sizes = (max(self.fixed_size),) if self.fixed_size is not None else tuple(sorted(set(det_sizes)))
        # a fixed-input detector at its own size misses faces that fill the photo (SCRFD's largest anchors are
        # smaller than its input): when it finds nothing, the smaller sizes run, letterboxed into its input
        self.fallback_sizes = (
            tuple(size for size in sorted(set(det_sizes)) if size < self.det_sizes[-1]) if self.fixed_size else ()
        )
        self.output_names = [output.name for output in session.get_outputs()]
        if len(self.output_names) != 9:
            raise ValueError(f"detector has {len(self.output_names)} outputs; SCRFD with keypoints has 9")
        self._centers: dict[tuple[int, int, int], FloatArray] = {}
        self._centers_lock = threading.Lock()

    def detect(self, pixels: BGRImage) -> Detection:
        """Faces in ``pixels`` (boxes, scores, keypoints in its coordinates), merged over all sizes by NMS."""
        found = [self._detect_at(pixels, size) for size in self.det_sizes]
        if self.fallback_sizes and not any(len(part.scores) for part in found):
            found = [self._detect_at(pixels, size) for size in self.fallback_sizes]
        boxes = np.concatenate([f.boxes for f in found])
        scores = np.concatenate([f.scores for f in found])
        kps = np.concatenate([f.kps for f in found])
        keep = nms(boxes, scores, NMS_THRESHOLD)
        return Detection(boxes[keep], scores[keep], kps[keep])

    def _detect_at(self, pixels: BGRImage, size: int) -> Detection:
        blob, det_scale = self.prepare(pixels, size)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        boxes, scores, kps = self._decode(outputs, blob.shape[2], blob.shape[3])
        return Detection(boxes / det_scale, scores, kps / det_scale)

    def prepare(self, pixels: BGRImage, size: int) -> tuple[FloatArray, float]:
        """Shrink (bilinear, as the reference) to fit ``size``, pad, normalise: an RGB NCHW blob."""
        height, width = pixels.shape[:2]
        if height / width > 1.0:
            new_height, new_width = size, int(size / (height / width))
        else:
            new_width, new_height = size, int(size * (height / width))
        new_width, new_height = max(new_width, 1), max(new_height, 1)
        det_scale = new_height / height
        resized = cv2.resize(pixels, (new_width, new_height))
        if self.fixed_size is not None:
            canvas_w, canvas_h = self.fixed_size
        elif self.square:
            canvas_w = canvas_h = size
        else:
            canvas_w, canvas_h = _ceil32(new_width), _ceil32(new_height)
        canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = resized
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (canvas_w, canvas_h), (127.5, 127.5, 127.5), swapRB=True)
        return np.asarray(blob, dtype=np.float32), det_scale

    def _decode(self, outputs: Sequence[Any], height: int, width: int) -> tuple[FloatArray, FloatArray, FloatArray]:
        boxes, scores, points = [], [], []
        for index, stride in enumerate(self.strides):
            score = np.asarray(outputs[index]).reshape(-1)
            keep = np.nonzero(score >= self.threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(height // stride, width // stride, stride)[keep]
            distance = np.asarray(outputs[index + 3]).reshape(-1, 4)[keep] * stride
            offsets = np.asarray(outputs[index + 6]).reshape(-1, 10)[keep] * stride
            boxes.append(np.concatenate([centers - distance[:, :2], centers + distance[:, 2:]], axis=1))
            points.append((np.tile(centers, 5) + offsets).reshape(-1, 5, 2))
            scores.append(score[keep])
        if not scores:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        return (
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(scores).astype(np.float32),
            np.concatenate(points).astype(np.float32),
        )

    def _anchor_centers(self, rows: int, cols: int, stride: int) -> FloatArray:
        key = (rows, cols, stride)
        with self._centers_lock:
            centers = self._centers.get(key)
            if centers is None:
                ys, xs = np.mgrid[:rows, :cols]
                grid = np.stack([xs, ys], axis=-1).astype(np.float32)
                centers = np.repeat((grid * stride).reshape(-1, 2), self.anchors, axis=0)
                self._centers[key] = centers
        return centers


class Recognizer:
    """An ArcFace-style recognizer: 112x112 BGR crops -> L2-normalised embeddings (the model sees RGB)."""

    def __init__(self, session: Any, mean: float, std: float) -> None:
        self.session = session
        self.mean, self.std = mean, std
        inputs = session.get_inputs()[0]
        self.input_name = inputs.name
        self.size = int(inputs.shape[2])
        self.batched = not isinstance(inputs.shape[0], int) or inputs.shape[0] != 1
        self.output_name = session.get_outputs()[0].name
        self.dim = int(session.get_outputs()[0].shape[1])

    def embed(self, crops: Sequence[BGRImage]) -> FloatArray:
        return self.features(crops)[0]

    def features(self, crops: Sequence[BGRImage]) -> tuple[FloatArray, FloatArray]:
        """The L2-normalised embeddings of ``crops`` and the raw norms they had before normalising."""
        if not crops:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.float32)
        mean = (self.mean, self.mean, self.mean)
        size = (self.size, self.size)
        blob = np.asarray(cv2.dnn.blobFromImages(list(crops), 1.0 / self.std, size, mean, swapRB=True), np.float32)
        if self.batched:
            vectors = self.session.run([self.output_name], {self.input_name: blob})[0]
        else:
            vectors = np.concatenate(
                [self.session.run([self.output_name], {self.input_name: blob[i : i + 1]})[0] for i in range(len(blob))]
            )
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(crops), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalised: FloatArray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        return normalised, norms[:, 0].astype(np.float32)


Redecode = Callable[[float], DecodedImage]


class FaceEngine:
    """Detector + aligner + recognizer. Thread-safe: sessions may run concurrently on the CPU."""

    def __init__(self, pack: ModelPack, detector: Detector, recognizer: Recognizer, min_face: float = 0.0) -> None:
        self.pack = pack
        self.detector = detector
        self.recognizer = recognizer
        self.min_face = min_face

    def analyze(self, image: DecodedImage, redecode: Redecode | None = None) -> list[Face]:
        """Faces of one image; ``redecode(scale)`` gives a finer decode when a face needs one."""
        found = self.detector.detect(image.pixels)
        boxes = found.boxes / image.scale
        kps = found.kps / image.scale
        shorts = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = np.nonzero(shorts >= self.min_face)[0]
        if keep.size == 0:
            return []
        source = image
        needed = max(min(1.0, ALIGN_MIN_FACE_PX / max(float(shorts[i]), 1.0)) for i in keep)
        if redecode is not None and image.reducible and needed > image.scale * 1.0001:
            source = redecode(needed)
        crops = [align(source.pixels, kps[i] * source.scale, self.recognizer.size) for i in keep]
        vectors, norms = self.recognizer.features(crops)
        return [
            Face(
                boxes[i].astype(np.float32),
                kps[i].astype(np.float32),
                float(found.scores[i]),
                float(shorts[i]),
                vectors[row],
                float(norms[row]),
                sharpness(crops[row]),
            )
            for row, i in enumerate(keep)
        ]


def sharpness(crop: BGRImage) -> float:
    """The variance of the Laplacian of the crop's grey levels: blurred and upscaled faces score low."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def similarity_transform(src: NDArray[np.float64], dst: NDArray[np.float64]) -> NDArray[np.float64]:
    """The least-squares similarity (Umeyama 1991) mapping ``src`` points onto ``dst``: a 2x3 matrix."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    u, s, vt = np.linalg.svd(cov)
    rotation = u @ np.diag(d) @ vt
    variance = src_c.var(axis=0).sum()
    scale = float((s * d).sum() / variance) if variance > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align(pixels: BGRImage, kps: FloatArray, size: int = 112) -> BGRImage:
    """The 5-point aligned crop (InsightFace's ``norm_crop``) of ``size`` x ``size`` pixels."""
    matrix = similarity_transform(kps.astype(np.float64), ARCFACE_TEMPLATE * (size / 112.0))
    crop: BGRImage = cv2.warpAffine(pixels, matrix, (size, size), borderValue=0.0).astype(np.uint8, copy=False)
    return crop


def nms(boxes: FloatArray, scores: FloatArray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression over boxes sorted by descending score (InsightFace's variant)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[overlap <= threshold]
    return keep


def _ceil32(value: int) -> int:
    return int(math.ceil(value / 32) * 32)


def build_engine(
    pack: ModelPack,
    options: RuntimeOptions,
    det_sizes: tuple[int, ...] = DEFAULT_DET_SIZES,
    min_face: float = 0.0,
    square: bool = True,
) -> FaceEngine:
    """Create the two sessions for ``pack`` and wrap them in a :class:`FaceEngine`."""
    detector = Detector(create_session(pack.detector, options), pack.settings.det_thresh, det_sizes, square)
    recognizer = Recognizer(create_session(pack.recognizer, options), pack.settings.rec_mean, pack.settings.rec_std)
    return FaceEngine(pack, detector, recognizer, min_face)
