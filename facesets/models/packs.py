"""Model packs: a folder of ONNX files in InsightFace layout, and the identity recorded in every cache.

A pack is found by ``--model-dir DIR`` (the pack folder itself), else by ``--model-pack NAME`` under
``$FACESETS_MODEL_ROOT`` and then ``~/.insightface/models``. Only the detector and the recognizer are
used; they are picked by file name from :data:`DETECTOR_FILES` and :data:`RECOGNIZER_FILES` (an explicit
table, never guessed from tensor shapes). Per-pack settings come from :data:`PACK_SETTINGS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from ..base.errors import ModelPackError

DEFAULT_PACK = "buffalo_l"
MODEL_ROOT_ENV = "FACESETS_MODEL_ROOT"

# Known InsightFace-layout file names, by role. The first match in a folder wins.
DETECTOR_FILES: tuple[str, ...] = (
    "det_10g.onnx",
    "det_2.5g.onnx",
    "det_500m.onnx",
    "scrfd_10g_bnkps.onnx",
    "scrfd_2.5g.onnx",
    "scrfd_2.5g_bnkps.onnx",
    "scrfd_500m_bnkps.onnx",
)
RECOGNIZER_FILES: tuple[str, ...] = (
    "w600k_r50.onnx",
    "w600k_mbf.onnx",
    "glintr100.onnx",
    "fr_feature.onnx",
)


@dataclass(frozen=True)
class PackSettings:
    """Per-pack defaults: detection score threshold and the recognizer's input normalisation."""

    det_thresh: float = 0.5
    rec_mean: float = 127.5
    rec_std: float = 127.5


PACK_SETTINGS: Mapping[str, PackSettings] = {
    "buffalo_l": PackSettings(),
    "buffalo_m": PackSettings(),
    "buffalo_s": PackSettings(),
    "buffalo_sc": PackSettings(),
    "antelopev2": PackSettings(),
    "scrfd2.5g-mbf": PackSettings(),
    "scrfd500m-mbf": PackSettings(),
}


@dataclass(frozen=True)
class PackIdentity:
    """What made a cache's vectors: the pack's name and the BLAKE3 of each model file it uses."""

    name: str
    detector: str
    detector_blake3: str
    recognizer: str
    recognizer_blake3: str

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "detector": self.detector,
            "detector_blake3": self.detector_blake3,
            "recognizer": self.recognizer,
            "recognizer_blake3": self.recognizer_blake3,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PackIdentity:
        return cls(**{key: str(data[key]) for key in cls.__dataclass_fields__})

    def same_recognizer(self, other: PackIdentity) -> bool:
        """The same recognizer bytes, hence one embedding space (the pack's name and detector may differ: two
        packs that share a recognizer embed a face into the same space, a detector only moves its crop a little)."""
        return self.recognizer_blake3 == other.recognizer_blake3

    def describe(self) -> str:
        return f"{self.name} ({self.recognizer} {self.recognizer_blake3[:12]})"

    def describe_files(self) -> str:
        """Both model files, for telling two packs apart that share a recognizer."""
        return (
            f"{self.name} (detector {self.detector} {self.detector_blake3[:12]}, "
            f"recognizer {self.recognizer} {self.recognizer_blake3[:12]})"
        )

    def same_files(self, other: PackIdentity) -> bool:
        """The same detector and recognizer bytes: faces found and embedded alike."""
        return (self.detector_blake3, self.recognizer_blake3) == (other.detector_blake3, other.recognizer_blake3)


@dataclass(frozen=True)
class ModelPack:
    name: str
    folder: Path
    detector: Path
    recognizer: Path
    settings: PackSettings

    def identity(self) -> PackIdentity:
        return PackIdentity(
            name=self.name,
            detector=self.detector.name,
            detector_blake3=file_blake3(self.detector),
            recognizer=self.recognizer.name,
            recognizer_blake3=file_blake3(self.recognizer),
        )


def file_blake3(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.hexdigest()


def candidate_folders(model_pack: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """Where ``--model-pack NAME`` is looked for, in order."""
    env = os.environ if env is None else env
    roots: list[Path] = []
    if env.get(MODEL_ROOT_ENV):
        roots.append(Path(env[MODEL_ROOT_ENV]).expanduser())
    roots.append(Path("~/.insightface/models").expanduser())
    return [root / model_pack for root in roots]


def resolve_pack(
    model_dir: Path | None = None,
    model_pack: str = DEFAULT_PACK,
    env: Mapping[str, str] | None = None,
) -> ModelPack:
    """Find the pack folder and its two model files, or raise :class:`ModelPackError` saying where we looked."""
    folders = [Path(model_dir).expanduser()] if model_dir is not None else candidate_folders(model_pack, env)
    for folder in folders:
        if folder.is_dir():
            return _open_pack(folder)
    raise ModelPackError(_missing_message(folders, model_dir, model_pack))


def _open_pack(folder: Path) -> ModelPack:
    try:
        present = {entry.name for entry in folder.iterdir()}
    except OSError as exc:
        raise ModelPackError(f"cannot read model pack folder {folder}: {exc.strerror}") from exc
    detector = _pick(folder, present, DETECTOR_FILES, "detector")
    recognizer = _pick(folder, present, RECOGNIZER_FILES, "recognizer")
    name = folder.name
    return ModelPack(name, folder, detector, recognizer, PACK_SETTINGS.get(name, PackSettings()))


def _pick(folder: Path, present: set[str], table: Sequence[str], role: str) -> Path:
    for filename in table:
        if filename in present:
            path = folder / filename
            if not os.access(path, os.R_OK):
                raise ModelPackError(f"model file {path} is not readable: check its permissions")
            return path
    onnx = sorted(name for name in present if name.endswith(".onnx"))
    raise ModelPackError(
        f"model pack {folder} has no known {role} file. Found: {', '.join(onnx) or 'no .onnx files'}. "
        f"Known {role} files: {', '.join(table)}."
    )


def _missing_message(folders: Sequence[Path], model_dir: Path | None, model_pack: str) -> str:
    looked = "\n".join(f"  - {folder}" for folder in folders)
    if model_dir is not None:
        return f"model pack folder not found:\n{looked}\nPass --model-dir with a folder that holds the .onnx files."
    return (
        f"model pack {model_pack!r} not found. Looked in:\n{looked}\n"
        f"Download InsightFace's buffalo_l pack (buffalo_l.zip from the insightface releases page) on a machine "
        f"with internet access, unzip it to ~/.insightface/models/buffalo_l, or point ${MODEL_ROOT_ENV} at the "
        f"folder that holds it, or pass --model-dir DIR."
    )
