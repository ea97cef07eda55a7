"""The CLIP image tower: upright images -> L2-normalised vectors (see :mod:`facesets.models.clip` for the layout)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from numpy.typing import NDArray
from PIL import Image

from ..base.errors import ModelPackError
from .clip import ClipIdentity
from .decode import DecodedImage
from .packs import file_blake3
from .runtime import RuntimeOptions, create_session

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def read(cls, path: Path) -> Preprocess:
        try:
            config = orjson.loads(path.read_bytes())
            size = config["size"]
            preprocess = cls(
                size=int(size[0] if isinstance(size, list) else size),
                mean=tuple(float(v) for v in config["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in config["std"]),  # type: ignore[arg-type]
                interpolation=str(config.get("interpolation", "bicubic")).lower(),
                resize_mode=str(config.get("resize_mode", "shortest")),
            )
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelPackError(f"cannot read CLIP preprocessing config {path}: {exc}") from exc
        if preprocess.resize_mode not in ("shortest", "squash") or preprocess.interpolation not in _RESAMPLING:
            raise ModelPackError(
                f"{path}: unsupported resize_mode {preprocess.resize_mode!r} or interpolation "
                f"{preprocess.interpolation!r}"
            )
        return preprocess


_RESAMPLING = {resampling.name.lower(): resampling for resampling in Image.Resampling}


class ClipVisual:
    """The image tower: upright images -> L2-normalised CLIP vectors."""

    def __init__(self, folder: Path, options: RuntimeOptions) -> None:
        self.folder = folder
        model = folder / "visual" / "model.onnx"
        self.preprocess_config = Preprocess.read(folder / "visual" / "preprocess_cfg.json")
        self.session = create_session(model, options)
        inputs = self.session.get_inputs()[0]
        self.input_name = inputs.name
        self.batched = not isinstance(inputs.shape[0], int) or inputs.shape[0] != 1
        self.output_name = self.session.get_outputs()[0].name
        self.identity = ClipIdentity(folder.name, file_blake3(model))

    def preprocess(self, bgr: NDArray[np.uint8]) -> FloatArray:
        """Immich's preprocessing of one upright BGR image: a 3 x S x S float32 array."""
        config = self.preprocess_config
        image = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
        resample = _RESAMPLING[config.interpolation]
        size = config.size
        if config.resize_mode == "squash":
            image = image.resize((size, size), resample=resample)
        else:
            if image.width < image.height:
                image = image.resize((size, int(image.height / image.width * size)), resample=resample)
            else:
                image = image.resize((int(image.width / image.height * size), size), resample=resample)
            left, upper = int(image.width / 2 - size / 2), int(image.height / 2 - size / 2)
            image = image.crop((left, upper, left + size, upper + size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        mean, std = np.array(config.mean, np.float32), np.array(config.std, np.float32)
        normalised: FloatArray = ((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32)
        return normalised

    def embed(self, images: Sequence[DecodedImage]) -> FloatArray:
        return self.embed_pixels([image.pixels for image in images])

    def embed_pixels(self, images: Sequence[NDArray[np.uint8]]) -> FloatArray:
        blob = np.stack([self.preprocess(pixels) for pixels in images])
        if self.batched:
            vectors = self.session.run([self.output_name], {self.input_name: blob})[0]
        else:
            vectors = np.concatenate(
                [self.session.run([self.output_name], {self.input_name: blob[i : i + 1]})[0] for i in range(len(blob))]
            )
        vectors = np.asarray(vectors, np.float32).reshape(len(images), -1)
        normalised: FloatArray = (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )
        return normalised
