"""A tiny CLIP image tower with random weights, built in the tests (no download), and a numpy forward of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from PIL import Image

SIZE, CHANNELS, DIM = 32, 8, 512
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.2613026, 0.2757771)


def weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(size=(CHANNELS, 3, 4, 4)).astype(np.float32),
        "b1": rng.normal(size=CHANNELS).astype(np.float32),
        "w2": rng.normal(size=(DIM, CHANNELS)).astype(np.float32),
        "b2": rng.normal(size=DIM).astype(np.float32),
    }


def build(folder: Path, seed: int = 0, resize_mode: str = "shortest") -> Path:
    """Write ``folder/visual/model.onnx`` and ``preprocess_cfg.json`` in Immich's layout; return ``folder``."""
    from onnx import TensorProto, helper, numpy_helper, save

    w = weights(seed)
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["conv"], strides=[4, 4], kernel_shape=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["embedding"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_visual",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(value, name) for name, value in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    visual = folder / "visual"
    visual.mkdir(parents=True)
    save(model, str(visual / "model.onnx"))
    config = {
        "size": [SIZE, SIZE],
        "mode": "RGB",
        "mean": MEAN,
        "std": STD,
        "interpolation": "bicubic",
        "resize_mode": resize_mode,
    }
    (visual / "preprocess_cfg.json").write_bytes(orjson.dumps(config))
    return folder


def reference_preprocess(rgb: Image.Image) -> np.ndarray:
    """Immich's transform, written out independently: shortest side to SIZE (bicubic), centre crop, normalise."""
    if rgb.width < rgb.height:
        resized = rgb.resize((SIZE, int(rgb.height / rgb.width * SIZE)), Image.Resampling.BICUBIC)
    else:
        resized = rgb.resize((int(rgb.width / rgb.height * SIZE), SIZE), Image.Resampling.BICUBIC)
    left, top = int(resized.width / 2 - SIZE / 2), int(resized.height / 2 - SIZE / 2)
    crop = np.asarray(resized.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    return ((crop - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)


def reference_vector(rgb: Image.Image, seed: int = 0) -> np.ndarray:
    """The tiny tower's forward in numpy, on the independently preprocessed image, L2-normalised."""
    w = weights(seed)
    x = reference_preprocess(rgb)
    patches = x.reshape(3, SIZE // 4, 4, SIZE // 4, 4).transpose(1, 3, 0, 2, 4)
    conv = np.einsum("ijcab,kcab->ijk", patches, w["w1"]) + w["b1"]
    pooled = np.maximum(conv, 0).mean(axis=(0, 1))
    vector = w["w2"] @ pooled + w["b2"]
    return (vector / np.linalg.norm(vector)).astype(np.float32)


TEXT_LENGTH = 16
WORDS = ("a", "red", "bicycle", "dog", "on", "the", "beach", "birthday", "cake", "snow", "mountain")
SPECIAL = ("<|startoftext|>", "<|endoftext|>", "[UNK]")


def text_table(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    return rng.normal(size=(len(SPECIAL) + len(WORDS), DIM)).astype(np.float32)


def build_text(folder: Path, seed: int = 0) -> Path:
    """Add Immich's text-tower layout to ``folder``: config.json, textual/model.onnx and a word-level tokenizer."""
    from onnx import TensorProto, helper, numpy_helper, save
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    textual = folder / "textual"
    textual.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(textual / "tokenizer.json"))
    (textual / "tokenizer_config.json").write_bytes(orjson.dumps({"pad_token": "<|endoftext|>"}))
    (folder / "config.json").write_bytes(orjson.dumps({"embed_dim": DIM, "text_cfg": {"context_length": TEXT_LENGTH}}))
    nodes = [
        helper.make_node("Gather", ["table", "text"], ["tokens"], axis=0),
        helper.make_node("ReduceMean", ["tokens"], ["embedding"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_textual",
        [helper.make_tensor_value_info("text", TensorProto.INT32, [1, TEXT_LENGTH])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, DIM])],
        [numpy_helper.from_array(text_table(seed), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(textual / "model.onnx"))
    return folder


def reference_text_vector(text: str, seed: int = 0) -> np.ndarray:
    """The tiny text tower in numpy: start token, words, end token, padded with the end token; mean; unit."""
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    ids = [
        vocab["<|startoftext|>"],
        *(vocab.get(word, vocab["[UNK]"]) for word in text.split()),
        vocab["<|endoftext|>"],
    ]
    ids = (ids + [vocab["<|endoftext|>"]] * TEXT_LENGTH)[:TEXT_LENGTH]
    vector = text_table(seed)[ids].mean(axis=0)
    return (vector / np.linalg.norm(vector)).astype(np.float32)
