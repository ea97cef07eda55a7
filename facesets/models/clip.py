"""CLIP image embeddings on onnxruntime, from ONNX exports in Immich's layout.

A CLIP model is a folder, as Immich publishes them (for the default, the Hugging Face repository
``immich-app/ViT-B-32__openai``)::

    <name>/visual/model.onnx            image tower: input ``image``, float32 N x 3 x S x S -> N x D
    <name>/visual/preprocess_cfg.json   {"size": S or [S, S], "mean": [...], "std": [...],
                                         "interpolation": "bicubic", "resize_mode": "shortest" | "squash"}
    <name>/textual/...                  the text tower, used for text search by the database stage

It is found by ``--clip-dir DIR``, else by ``--clip-model NAME`` under ``$FACESETS_CLIP_ROOT`` and then
``~/.cache/facesets/clip``. Preprocessing is Immich's (shortest side resized with the configured filter,
centre crop, scaled to 0..1, normalised), applied to the upright image. The same sessions and providers as the
face models run it (:mod:`facesets.models.clipvisual`), so the Windows worker needs no torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import ModelPackError
from .packs import file_blake3

DEFAULT_CLIP_MODEL = "ViT-B-32__openai"
CLIP_ROOT_ENV = "FACESETS_CLIP_ROOT"


@dataclass(frozen=True)
class ClipIdentity:
    """What made a CLIP vector: the model's name and the BLAKE3 of its image tower."""

    name: str
    visual_blake3: str

    def describe(self) -> str:
        return f"{self.name} ({self.visual_blake3[:12]})"


def clip_folders(name: str, env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    roots = [Path(env[CLIP_ROOT_ENV]).expanduser()] if env.get(CLIP_ROOT_ENV) else []
    roots.append(Path("~/.cache/facesets/clip").expanduser())
    return [root / name for root in roots]


SKIP_HINT = " --no-clip skips CLIP embeddings."


def resolve_clip(
    clip_dir: Path | None, name: str = DEFAULT_CLIP_MODEL, env: Mapping[str, str] | None = None, hint: str = ""
) -> Path:
    """The CLIP model folder, or :class:`ModelPackError` saying where we looked and how to get one (and
    ``hint``, what else the command can do)."""
    folders = [Path(clip_dir).expanduser()] if clip_dir is not None else clip_folders(name, env)
    for folder in folders:
        if (folder / "visual" / "model.onnx").is_file():
            return folder
    looked = "\n".join(f"  - {folder / 'visual' / 'model.onnx'}" for folder in folders)
    raise ModelPackError(
        f"CLIP model {name!r} not found. Looked for:\n{looked}\n"
        f"Download Immich's ONNX export of it on a machine with internet access (the Hugging Face repository "
        f"immich-app/{name}, folders visual/ and textual/) into ~/.cache/facesets/clip/{name}, or point "
        f"${CLIP_ROOT_ENV} at the folder that holds it, or pass --clip-dir DIR.{hint}"
    )


def clip_identity(folder: Path) -> ClipIdentity:
    """The identity of a CLIP model folder (hashes the image tower; creates no session)."""
    return ClipIdentity(folder.name, file_blake3(folder / "visual" / "model.onnx"))
