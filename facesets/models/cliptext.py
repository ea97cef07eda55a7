"""The CLIP text tower: a query -> an L2-normalised vector in the image tower's space (Immich's layout).

    <name>/config.json                      {"text_cfg": {"context_length": 77, "tokenizer_kwargs": {...}}}
    <name>/textual/model.onnx               input ``text`` int32 1 x L (or ``input_ids`` + ``attention_mask``)
    <name>/textual/tokenizer.json           a Hugging Face ``tokenizers`` file
    <name>/textual/tokenizer_config.json    {"pad_token": "<|endoftext|>", ...}

Tokenisation is Immich's: whitespace collapsed (and, for models whose ``tokenizer_kwargs.clean`` is
``canonicalize``, punctuation removed and lower-cased), padded and truncated to the context length.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from ..base.errors import ModelPackError
from .runtime import RuntimeOptions, create_session

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, canonicalize: bool = False) -> str:
    text = " ".join(text.split())
    return text.translate(_PUNCTUATION).lower() if canonicalize else text


class ClipText:
    """The text tower of a CLIP model folder, with its tokenizer."""

    def __init__(self, folder: Path, options: RuntimeOptions) -> None:
        textual = folder / "textual"
        model = textual / "model.onnx"
        if not model.is_file():
            raise ModelPackError(
                f"{model} not found: text search needs the CLIP model's text tower (the textual/ folder of "
                f"Immich's export immich-app/{folder.name}) next to its visual/ folder"
            )
        text_cfg = _read_json(folder / "config.json").get("text_cfg", {}) if (folder / "config.json").exists() else {}
        self.context_length = int(text_cfg.get("context_length", 77))
        self.canonicalize = (text_cfg.get("tokenizer_kwargs") or {}).get("clean") == "canonicalize"
        self.tokenizer = _tokenizer(textual, self.context_length)
        self.session = create_session(model, options)
        self.inputs = [item.name for item in self.session.get_inputs()]

    def embed(self, text: str) -> NDArray[np.float32]:
        encoding = self.tokenizer.encode(clean_text(text, self.canonicalize))
        if "input_ids" in self.inputs:
            feeds = {
                "input_ids": np.array([encoding.ids], np.int32),
                "attention_mask": np.array([encoding.attention_mask], np.int32),
            }
        else:
            feeds = {self.inputs[0]: np.array([encoding.ids], np.int32)}
        vector = np.asarray(self.session.run(None, feeds)[0], np.float32).reshape(-1)
        normalised: NDArray[np.float32] = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
        return normalised


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelPackError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelPackError(f"{path} is not a JSON object")
    return data


def _tokenizer(textual: Path, context_length: int) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ModelPackError("text search needs the tokenizers package: pip install tokenizers") from exc
    pad_token = str(_read_json(textual / "tokenizer_config.json").get("pad_token") or "<|endoftext|>")
    try:
        tokenizer = Tokenizer.from_file(str(textual / "tokenizer.json"))
    except Exception as exc:  # the library raises a bare Exception for unreadable or malformed files
        raise ModelPackError(f"cannot read the CLIP tokenizer {textual / 'tokenizer.json'}: {exc}") from exc
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ModelPackError(f"{textual / 'tokenizer.json'} has no pad token {pad_token!r}")
    tokenizer.enable_padding(length=context_length, pad_token=pad_token, pad_id=pad_id)
    tokenizer.enable_truncation(max_length=context_length)
    return tokenizer
