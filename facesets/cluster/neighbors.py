"""Nearest-neighbour graphs over unit vectors: the only place clustering looks at pairs of faces.

Clustering never builds an n x n matrix. It asks this module for each face's ``k`` most similar faces
(cosine similarity, at least ``min_sim``) and works on that sparse graph:

- up to :data:`EXACT_LIMIT` faces, exact search (faiss ``IndexFlatIP`` when the ``cluster`` extra is
  installed, else blocked numpy products; memory: one block of ``BLOCK`` x n similarities);
- above it, faiss's "PCA + IVF + refine" recipe: candidates come from an inverted-file index (about
  4 x sqrt(n) lists, :data:`NPROBE` searched per query) over the vectors projected on their
  :data:`PCA_DIMS` principal components, trained on an evenly spaced sample; the best
  :data:`REFINE` x k candidates of each face are then re-scored exactly on the full vectors, so every
  similarity in the graph is exact and only the choice of candidates is approximate. At 20,000 synthetic
  faces this graph clusters to the same BCubed F1 as the exact one (0.827 vs 0.826) at a third of the
  search time. Vectors are added and searched in blocks, so memory is the vectors (held twice: the refine
  copy and the projected lists) plus one block of results.

Both are deterministic for a given input order; callers sort faces into a canonical order first so that the
graph, and everything built on it, does not depend on the order the faces arrived in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..base.progress import Progress

EXACT_LIMIT = 30_000
BLOCK = 4096
NPROBE = 16
TRAIN_PER_LIST = 20
PCA_DIMS = 128
REFINE = 3
DEFAULT_K = 24


@dataclass(frozen=True)
class Graph:
    """Undirected edges ``src < dst`` with their cosine similarity, each pair once."""

    src: NDArray[np.int64]
    dst: NDArray[np.int64]
    sim: NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.src)


def knn_graph(
    vectors: NDArray[np.float32],
    k: int = DEFAULT_K,
    min_sim: float = -1.0,
    progress: Progress | None = None,
) -> Graph:
    """The symmetrised k-nearest-neighbour graph of L2-normalised ``vectors``, edges below ``min_sim`` dropped;
    ``progress`` advances by each block of faces searched."""
    count = len(vectors)
    k = min(k, count - 1)
    if k <= 0:
        return _empty_graph()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    search = _exact_search if count <= EXACT_LIMIT else _ivf_search
    parts = []
    for block_start, ids, sims in search(vectors, k):
        parts.append(_edges(block_start, ids, sims, min_sim))
        if progress:
            progress.advance(len(ids))
    src = np.concatenate([part[0] for part in parts])
    dst = np.concatenate([part[1] for part in parts])
    sim = np.concatenate([part[2] for part in parts])
    return _unique_edges(src, dst, sim)


def _edges(start: int, ids: NDArray[np.int64], sims: NDArray[np.float32], min_sim: float) -> tuple[Any, Any, Any]:
    rows = np.repeat(np.arange(start, start + len(ids), dtype=np.int64), ids.shape[1])
    cols, values = ids.ravel(), sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (values >= min_sim)
    rows, cols, values = rows[keep], cols[keep], values[keep]
    return np.minimum(rows, cols), np.maximum(rows, cols), values


def first_of_runs(*keys: NDArray[Any]) -> NDArray[np.bool_]:
    """For arrays sorted together: True where a row starts a run of equal keys (in every array)."""
    first = np.ones(len(keys[0]), dtype=bool)
    if len(first):
        first[1:] = np.logical_or.reduce([key[1:] != key[:-1] for key in keys])
    return first


def _unique_edges(src: NDArray[np.int64], dst: NDArray[np.int64], sim: NDArray[np.float32]) -> Graph:
    order = np.lexsort((dst, src))
    src, dst, sim = src[order], dst[order], sim[order]
    first = first_of_runs(src, dst)
    return Graph(src[first], dst[first], sim[first].astype(np.float32, copy=False))


def _empty_graph() -> Graph:
    return Graph(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _exact_search(vectors: NDArray[np.float32], k: int) -> Any:
    try:
        import faiss
    except ImportError:
        yield from _numpy_search(vectors, k)
        return
    index = faiss.IndexFlatIP(vectors.shape[1])  # BLAS products and a heap per row: twice numpy's speed here
    index.add(vectors)
    for start in range(0, len(vectors), BLOCK):
        sims, ids = index.search(vectors[start : start + BLOCK], k + 1)
        yield start, ids.astype(np.int64), sims.astype(np.float32)


def _numpy_search(vectors: NDArray[np.float32], k: int) -> Any:
    for start in range(0, len(vectors), BLOCK):
        block = vectors[start : start + BLOCK] @ vectors.T
        ids = np.argpartition(-block, k, axis=1)[:, : k + 1].astype(np.int64)
        yield start, ids, np.take_along_axis(block, ids, axis=1)


def _ivf_search(vectors: NDArray[np.float32], k: int) -> Any:
    import faiss  # imported here: only large libraries need it

    count, dim = vectors.shape
    lists = int(min(max(16, 4 * np.sqrt(count)), count // TRAIN_PER_LIST))
    sample = vectors[:: max(1, count // (lists * TRAIN_PER_LIST))]
    dims = min(PCA_DIMS, dim, len(sample))
    coarse = faiss.index_factory(dim, f"PCA{dims},IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    lists_index = faiss.extract_index_ivf(coarse)
    lists_index.cp.min_points_per_centroid = 1  # 20 a list is enough here; faiss would warn below 39
    lists_index.nprobe = NPROBE
    coarse.train(sample)
    index = faiss.IndexRefineFlat(coarse)
    index.k_factor = REFINE
    for start in range(0, count, BLOCK * 16):
        index.add(vectors[start : start + BLOCK * 16])
    for start in range(0, count, BLOCK * 4):
        sims, ids = index.search(vectors[start : start + BLOCK * 4], k + 1)
        yield start, ids.astype(np.int64), sims.astype(np.float32)
