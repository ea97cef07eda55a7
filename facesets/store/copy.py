"""PostgreSQL binary COPY payloads built with numpy: one structured array per batch, no per-row Python.

Face rows have a fixed size (a 64-character BLAKE3, two ``real[]`` of fixed length, two reals, the model name,
one ``vector(512)``), so a batch is a numpy record array in network byte order whose bytes are the COPY stream.
Layouts (PostgreSQL ``COPY ... WITH (FORMAT BINARY)``; ``array_recv``; pgvector's ``vector_recv``):

    file     signature, int32 flags, int32 header extension length, rows, int16 -1
    row      int16 field count, then per field int32 byte length and the bytes
    real[]   int32 ndim = 1, int32 has-nulls = 0, oid float4, int32 length, int32 lower bound = 1,
             then per element int32 4 and the float4
    vector   int16 dimensions, int16 0, then the float4s
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..base.errors import CacheError

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
FLOAT4_OID = 700
HASH_LENGTH = 64


def _float_array_dtype(count: int) -> np.dtype[np.void]:
    return np.dtype(
        [
            ("size", ">i4"),
            ("ndim", ">i4"),
            ("nulls", ">i4"),
            ("oid", ">i4"),
            ("length", ">i4"),
            ("lower", ">i4"),
            ("items", [("size", ">i4"), ("value", ">f4")], (count,)),
        ]
    )


def _fill_float_array(target: NDArray[np.void], values: NDArray[np.float32]) -> None:
    count = values.shape[1]
    target["size"] = 20 + 8 * count
    target["ndim"], target["nulls"], target["oid"], target["length"], target["lower"] = 1, 0, FLOAT4_OID, count, 1
    target["items"]["size"] = 4
    target["items"]["value"] = values


def _check_hashes(hashes: list[str]) -> None:
    joined = "".join(hashes)
    try:
        valid = len(joined) == HASH_LENGTH * len(hashes) and len(bytes.fromhex(joined)) * 2 == len(joined)
    except ValueError:
        valid = False
    if not valid or joined != joined.lower():
        raise CacheError("a face cache holds an image hash that is not a 64-character BLAKE3 hex digest")


def face_rows(
    hashes: list[str],
    boxes: NDArray[np.float32],
    keypoints: NDArray[np.float32],
    scores: NDArray[np.float32],
    face_short: NDArray[np.float32],
    model: str,
    vectors: NDArray[np.float32],
    norms: NDArray[np.float32],
) -> memoryview:
    """The COPY stream for rows (image_id, box, keypoints, score, face_short, model, embedding, norm); an unknown
    norm is NaN."""
    _check_hashes(hashes)
    encoded = np.asarray(hashes, dtype=f"S{HASH_LENGTH}")
    name = model.encode()
    dim = vectors.shape[1]
    dtype = np.dtype(
        [
            ("fields", ">i2"),
            ("hash_size", ">i4"),
            ("hash", f"S{HASH_LENGTH}"),
            ("box", _float_array_dtype(boxes.shape[1])),
            ("kps", _float_array_dtype(keypoints.shape[1])),
            ("score_size", ">i4"),
            ("score", ">f4"),
            ("short_size", ">i4"),
            ("short", ">f4"),
            ("model_size", ">i4"),
            ("model", f"S{len(name)}"),
            ("vector_size", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vector", ">f4", (dim,)),
            ("norm_size", ">i4"),
            ("norm", ">f4"),
        ]
    )
    # one buffer holds the whole stream: the rows are a view between signature and trailer, so no copy is made
    stream = np.zeros(len(SIGNATURE) + len(hashes) * dtype.itemsize + len(TRAILER), np.uint8)
    stream[: len(SIGNATURE)] = np.frombuffer(SIGNATURE, np.uint8)
    stream[len(stream) - len(TRAILER) :] = np.frombuffer(TRAILER, np.uint8)
    rows = stream[len(SIGNATURE) : len(stream) - len(TRAILER)].view(dtype)
    rows["fields"] = 8
    rows["hash_size"], rows["hash"] = HASH_LENGTH, encoded
    _fill_float_array(rows["box"], boxes)
    _fill_float_array(rows["kps"], keypoints)
    rows["score_size"], rows["score"] = 4, scores
    rows["short_size"], rows["short"] = 4, face_short
    rows["model_size"], rows["model"] = len(name), name
    rows["vector_size"], rows["dim"], rows["unused"], rows["vector"] = 4 + 4 * dim, dim, 0, vectors
    rows["norm_size"], rows["norm"] = 4, norms
    return stream.data
