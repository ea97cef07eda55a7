"""Clustering faces into identities, on the sparse neighbour graph of :mod:`facesets.cluster.neighbors`.

Algorithms (``--algorithm``):

``graph`` (default)
    Average linkage with two constraints, merged in rounds of reciprocal best pairs:

    - *cannot-link*: two clusters that hold faces of the same photo never merge (one photo shows a person once);
    - *relative closeness* (Karypis et al., Chameleon, 1999): two clusters merge only if their average
      similarity is at least ``closeness`` times the cohesion (average inner similarity) of the less cohesive
      of the two. Two tight groups that are only loosely alike, such as look-alike relatives, stay apart, while
      a loose group of web photos of one person still grows. A single face is gated by the other cluster's
      cohesion alone; two single faces only by the distance.

    The average similarity of two clusters is computed exactly from their sum vectors
    (``mean(A @ B.T) == sum(A) @ sum(B) / (|A| |B|)``); the graph only proposes which pairs to compare.
    Average linkage is reducible, so merging every reciprocal best pair at once gives the classic result.
    Reciprocal pairs alone take a round per face when one large cluster absorbs its neighbours one by one
    (942 rounds for 20,000 faces), so each round also merges every cluster into its best partner when that
    similarity is within ``tolerance`` of the partner's own best (the (1+e)-approximate merges of TeraHAC,
    Dhulipala et al., 2023): a cluster absorbs many in one round, a moving cluster absorbs none, and two
    clusters that share a photo never move into the same one. ``tolerance`` 0 is exact reciprocal merging.
``average``
    Plain average linkage at the cluster distance (the original face-sets).
``components``
    Connected components of the faces closer than the cluster distance (the original ``rbv cluster``).
``dbscan``
    DBSCAN with ``eps`` = the cluster distance and ``min_points`` (Immich's face clustering, without its
    dependence on the order faces arrive).

Every algorithm returns, per face, the index of the smallest face in its cluster. Callers put faces in a
canonical order first (by face key: photo hash and box), which makes the result independent of the input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from ..base.progress import Progress
from .calibration import (
    FALSE_LINKS_PER_FACE,
    MIN_LIBRARY,
    LibraryEstimate,
    estimate,
    face_spreads,
    same_photo_pairs,
    shared_fraction,
)
from .neighbors import DEFAULT_K, Graph, first_of_runs, knn_graph

IntArray = NDArray[np.int64]
CHUNK = 1024  # pairs compared at once: small enough for the gathered rows to stay in cache (2x faster than 65,536)


class Algorithm(StrEnum):
    GRAPH = "graph"
    AVERAGE = "average"
    COMPONENTS = "components"
    DBSCAN = "dbscan"


@dataclass(frozen=True)
class ClusterParams:
    """``distance`` is a cosine distance (1 - similarity): single faces farther apart never join. ``None`` (the
    default) learns it from the library (:mod:`facesets.cluster.calibration`)."""

    algorithm: Algorithm = Algorithm.GRAPH
    distance: float | None = None
    closeness: float = 0.5
    min_points: int = 3
    k: int = DEFAULT_K
    tolerance: float = 0.02
    false_links: float = FALSE_LINKS_PER_FACE  # the seed threshold's budget (see facesets.cluster.calibration)
    impostors: tuple[float, float] | None = None  # the recognizer's impostor mean and sd, where known


def cluster(vectors: NDArray[np.float32], photos: IntArray, params: ClusterParams) -> IntArray:
    """Cluster label of each face (the smallest face index in its cluster).

    ``photos[i]`` identifies the photo face ``i`` comes from (used by ``graph`` for cannot-link)."""
    return cluster_library(vectors, photos, params)[0]


def cluster_library(
    vectors: NDArray[np.float32],
    photos: IntArray,
    params: ClusterParams,
    everyone: NDArray[np.float32] | None = None,
    poor: NDArray[np.bool_] | None = None,
    progress: Progress | None = None,
) -> tuple[IntArray, LibraryEstimate]:
    """:func:`cluster`, with what was learned about the library (thresholds, impostor statistics).

    ``everyone`` is every face of the library when only some are clustered (the impostor statistics are
    measured on all of them); ``poor`` marks the faces :func:`facesets.cluster.calibration.poor_faces` finds poor, which
    ``graph`` keeps from seeding or bridging clusters; ``progress`` advances by each block of
    faces whose neighbours were searched."""
    conflicts = same_photo_pairs(photos)
    library = estimate(vectors, conflicts, params.distance, params.false_links, everyone, params.impostors)
    count = len(vectors)
    if count == 0:
        return np.zeros(0, np.int64), library
    if params.algorithm is not Algorithm.GRAPH:
        graph = knn_graph(vectors, params.k, min_sim=library.seed_similarity, progress=progress)
        if params.algorithm is Algorithm.COMPONENTS:
            return components(count, graph.src, graph.dst), library
        if params.algorithm is Algorithm.DBSCAN:
            return _dbscan(count, graph, params.min_points), library
        return _average_linkage(vectors, graph, library, 0.0, None, params.tolerance, relax=False)
    graph = knn_graph(vectors, params.k, min_sim=library.lowest_similarity(), progress=progress)
    everyone = vectors if everyone is None else everyone
    # in a small library the cohort is too often the face's own person: no per-face spreads there
    spreads = face_spreads(vectors, everyone, library.impostor_sd) if len(everyone) >= MIN_LIBRARY else None
    late = None
    if poor is not None:  # the edges a poor face may be attached over, kept apart (a small share of the graph)
        touching = poor[graph.src] | poor[graph.dst]
        late = Graph(graph.src[touching], graph.dst[touching], graph.sim[touching])
    return _average_linkage(
        vectors,
        graph,
        library,
        params.closeness,
        conflicts,
        params.tolerance,
        relax=True,
        spreads=spreads,
        poor=poor,
        late=late,
    )


def components(count: int, src: IntArray, dst: IntArray) -> IntArray:
    """Union-find over the edges, vectorised: repeat 'take the smaller label across each edge' to a fixpoint."""
    labels = np.arange(count, dtype=np.int64)
    while True:
        low = np.minimum(labels[src], labels[dst])
        before = labels.copy()
        np.minimum.at(labels, src, low)
        np.minimum.at(labels, dst, low)
        labels = labels[labels]  # pointer jumping
        if np.array_equal(labels, before):
            return labels


def _dbscan(count: int, graph: Graph, min_points: int) -> IntArray:
    degree = np.bincount(graph.src, minlength=count) + np.bincount(graph.dst, minlength=count) + 1
    core = degree >= min_points
    both = core[graph.src] & core[graph.dst]
    labels = components(count, graph.src[both], graph.dst[both])
    labels[~core] = np.arange(count)[~core]
    # border points join the cluster of their most similar core neighbour
    src = np.concatenate([graph.src, graph.dst])
    dst = np.concatenate([graph.dst, graph.src])
    sim = np.concatenate([graph.sim, graph.sim])
    border = ~core[src] & core[dst]
    src, dst, sim = src[border], dst[border], sim[border]
    order = np.lexsort((dst, -sim, src))
    src, dst = src[order], dst[order]
    first = first_of_runs(src)
    labels[src[first]] = labels[dst[first]]
    return labels


def cohesion(sums: NDArray[np.float32], sizes: NDArray[np.int64]) -> NDArray[np.float64]:
    """Average similarity of the distinct pairs in each cluster, from its sum vector and size (sizes >= 2)."""
    norm2 = np.einsum("ij,ij->i", sums, sums, dtype=np.float64)
    result: NDArray[np.float64] = (norm2 - sizes) / (sizes * (sizes - 1))
    return result


class _Clusters:
    """Sum vector, size and cohesion per cluster, indexed by the face whose place the cluster keeps."""

    def __init__(self, vectors: NDArray[np.float32], spreads: NDArray[np.float32] | None = None) -> None:
        self.sums = np.array(vectors, dtype=np.float32, copy=True)
        self.size = np.ones(len(vectors), dtype=np.int64)
        self.cohesion = np.full(len(vectors), np.nan)
        self.spreads = np.ones(len(vectors), np.float64) if spreads is None else spreads.astype(np.float64)

    def spread(self, index: IntArray) -> NDArray[np.float64]:
        """The mean face spread of each cluster (see :func:`facesets.cluster.calibration.face_spreads`)."""
        result: NDArray[np.float64] = self.spreads[index] / self.size[index]
        return result

    def similarity(self, a: IntArray, b: IntArray) -> NDArray[np.float64]:
        out = np.empty(len(a))
        for start in range(0, len(a), CHUNK):
            part_a, part_b = a[start : start + CHUNK], b[start : start + CHUNK]
            dots = np.einsum("ij,ij->i", self.sums[part_a], self.sums[part_b], dtype=np.float64)
            out[start : start + CHUNK] = dots / (self.size[part_a] * self.size[part_b])
        return out

    def merge(self, keep: IntArray, gone: IntArray) -> None:
        """Move each cluster ``gone[i]`` into ``keep[i]`` (a cluster may absorb several)."""
        order = np.argsort(keep, kind="stable")
        keep, gone = keep[order], gone[order]
        starts = np.flatnonzero(first_of_runs(keep))
        target = keep[starts]
        self.sums[target] += np.add.reduceat(self.sums[gone], starts, axis=0)
        self.size[target] += np.add.reduceat(self.size[gone], starts)
        self.spreads[target] += np.add.reduceat(self.spreads[gone], starts)
        self.cohesion[target] = cohesion(self.sums[target], self.size[target])


def _average_linkage(
    vectors: NDArray[np.float32],
    graph: Graph,
    library: LibraryEstimate,
    closeness: float,
    conflicts: tuple[IntArray, IntArray] | None,
    tolerance: float,
    relax: bool,
    spreads: NDArray[np.float32] | None = None,
    poor: NDArray[np.bool_] | None = None,
    late: Graph | None = None,
) -> tuple[IntArray, LibraryEstimate]:
    """Merge rounds at the seed threshold; then, with ``relax``, rho and q are measured on the clusters formed
    and the rounds go on at the size-aware thresholds (:meth:`LibraryEstimate.required`), without the ``poor``
    faces the seed rounds left alone, which are attached at the end (:func:`_attach`) over the ``late`` edges
    (those of the poor faces)."""
    count = len(vectors)
    clusters = _Clusters(vectors, spreads)
    lowest = library.lowest_similarity() if relax else library.seed_similarity
    pairs = graph.src, graph.dst, graph.sim.astype(np.float64)
    labels, pairs = _rounds(
        clusters, np.arange(count, dtype=np.int64), pairs, library, closeness, conflicts, tolerance, lowest
    )
    if relax:
        roots = np.unique(labels)
        fractions, measured = shared_fraction(
            clusters.sums[roots],
            clusters.size[roots],
            vectors,
            np.searchsorted(roots, labels),
            library.impostor_sd,
            None if poor is None else np.flatnonzero(~poor),
        )
        library = library.with_shared(*(fractions or (1.0, 0.0)), measured)
        alone = None if poor is None else poor & (clusters.size == 1) & (labels == np.arange(count))
        if alone is not None:
            a, b, s = pairs
            keep = ~alone[a] & ~alone[b]
            pairs = a[keep], b[keep], s[keep]
        if fractions is not None:
            labels, pairs = _rounds(clusters, labels, pairs, library, closeness, conflicts, tolerance, lowest)
        if alone is not None and late is not None:
            labels, attached = _attach(labels, clusters, late, alone, library, closeness, conflicts)
            library = library.with_poor(int(np.count_nonzero(alone)), attached)
    return _smallest_member(labels), library


def _attach(
    labels: IntArray,
    clusters: _Clusters,
    edges: Graph,
    alone: NDArray[np.bool_],
    library: LibraryEstimate,
    closeness: float,
    conflicts: tuple[IntArray, IntArray] | None,
) -> tuple[IntArray, int]:
    """Each face of ``alone`` joins the one cluster its graph edges reach that would take it (the size-aware
    threshold, relative closeness, no photo in common); a face two clusters would take, or none, stays alone."""
    count = len(labels)
    one = alone[edges.src] != alone[edges.dst]
    src, dst = edges.src[one], edges.dst[one]
    face = np.where(alone[src], src, dst)
    target = labels[np.where(alone[src], dst, src)]
    _, first = np.unique(face * count + target, return_index=True)
    face, target = face[first], target[first]
    s = clusters.similarity(face, target)
    conflict_keys = _conflict_keys(conflicts, labels, count)
    low, high = np.minimum(face, target), np.maximum(face, target)
    takes = _allowed(low, high, s, clusters, closeness, conflict_keys, count)
    takes &= s >= library.required(
        clusters.size[face], clusters.size[target], clusters.spread(face), clusters.spread(target)
    )
    face, target, s = face[takes], target[takes], s[takes]
    alone = np.bincount(face, minlength=count)[face] == 1
    face, target, s = face[alone], target[alone], s[alone]
    best_sim = np.full(count, -np.inf)
    best_sim[face] = s
    into, movers = _without_clashes(face, target, best_sim, conflict_keys, count)
    if not len(movers):
        return labels, 0
    clusters.merge(into, movers)
    remap = np.arange(count, dtype=np.int64)
    remap[movers] = into
    return remap[labels], len(movers)


Pairs = tuple[IntArray, IntArray, NDArray[np.float64]]


def _rounds(
    clusters: _Clusters,
    labels: IntArray,
    pairs: Pairs,
    library: LibraryEstimate,
    closeness: float,
    conflicts: tuple[IntArray, IntArray] | None,
    tolerance: float,
    lowest: float,
) -> tuple[IntArray, Pairs]:
    """Merge rounds at ``library``'s thresholds until none is left; candidate pairs below ``lowest`` are dropped."""
    count = len(labels)
    a, b, s = pairs
    while len(a):
        conflict_keys = _conflict_keys(conflicts, labels, count)
        allowed = _allowed(a, b, s, clusters, closeness, conflict_keys, count)
        allowed &= s >= library.required(clusters.size[a], clusters.size[b], clusters.spread(a), clusters.spread(b))
        keep, gone = _merges(a[allowed], b[allowed], s[allowed], tolerance, conflict_keys, count)
        if not len(keep):
            break
        clusters.merge(keep, gone)
        remap = np.arange(count, dtype=np.int64)
        remap[gone] = keep
        labels = remap[labels]
        a, b, s = _update_pairs(remap[a], remap[b], s, clusters, keep, lowest, count)
    return labels, (a, b, s)


def _smallest_member(labels: IntArray) -> IntArray:
    """Labels renamed to the smallest face index of each cluster (a cluster may have kept another's place)."""
    smallest = np.full(len(labels), len(labels), dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(len(labels), dtype=np.int64))
    result: IntArray = smallest[labels]
    return result


def _allowed(
    a: IntArray,
    b: IntArray,
    s: NDArray[np.float64],
    clusters: _Clusters,
    closeness: float,
    conflict_keys: IntArray | None,
    count: int,
) -> NDArray[np.bool_]:
    with np.errstate(invalid="ignore"):
        # a singleton has no cohesion (NaN): fmin takes the other cluster's; two singletons are never gated
        limit = closeness * np.fmin(clusters.cohesion[a], clusters.cohesion[b])
        allowed: NDArray[np.bool_] = ~(s < limit)
    if conflict_keys is not None and len(conflict_keys):
        allowed &= ~np.isin(a * count + b, conflict_keys)
    return allowed


def _conflict_keys(conflicts: tuple[IntArray, IntArray] | None, labels: IntArray, count: int) -> IntArray | None:
    if conflicts is None:
        return None
    x, y = labels[conflicts[0]], labels[conflicts[1]]
    return np.unique(np.minimum(x, y) * count + np.maximum(x, y))


def _merges(
    a: IntArray, b: IntArray, s: NDArray[np.float64], tolerance: float, conflict_keys: IntArray | None, count: int
) -> tuple[IntArray, IntArray]:
    """This round's merges as (kept, moved) cluster pairs: every cluster whose best allowed partner is within
    ``tolerance`` of that partner's own best moves into it (of a reciprocal pair, the larger index moves);
    moves into a moving cluster wait, and of two moves into one cluster that share a photo, the less similar
    waits."""
    if not len(a):
        return a, b
    best_sim = np.full(count, -np.inf)
    np.maximum.at(best_sim, a, s)
    np.maximum.at(best_sim, b, s)
    best = np.full(count, count, dtype=np.int64)  # the most similar partner; ties: the smallest index
    for one, other in ((a, b), (b, a)):
        top = s == best_sim[one]
        np.minimum.at(best, one[top], other[top])
    nodes = np.flatnonzero(best < count)
    target = best[nodes]
    good = best_sim[nodes] >= (1.0 - tolerance) * best_sim[target]
    stays = (best[target] == nodes) & (nodes < target)  # the smaller of a reciprocal pair keeps its place
    movers, into = nodes[good & ~stays], target[good & ~stays]
    moving = np.zeros(count, dtype=bool)
    moving[movers] = True
    movers, into = movers[~moving[into]], into[~moving[into]]
    return _without_clashes(movers, into, best_sim, conflict_keys, count)


def _without_clashes(
    movers: IntArray, into: IntArray, best_sim: NDArray[np.float64], conflict_keys: IntArray | None, count: int
) -> tuple[IntArray, IntArray]:
    """Leave out, until none is left, the less similar of two moves into one cluster whose clusters share a photo."""
    if conflict_keys is None or not len(conflict_keys):
        return into, movers
    left, right = conflict_keys // count, conflict_keys % count
    while True:
        destination = np.arange(count, dtype=np.int64)
        destination[movers] = into
        clash = (destination[left] == destination[right]) & (left != right)
        if not clash.any():
            return into, movers
        one, other = left[clash], right[clash]
        weaker = np.where(best_sim[one] < best_sim[other], one, other)  # ties: the larger index waits
        weaker = np.where(best_sim[one] == best_sim[other], np.maximum(one, other), weaker)
        keep = ~np.isin(movers, weaker)
        if keep.all():  # not reached (a move never joins a cluster it clashes with); never loop on it
            keep = ~np.isin(movers, np.concatenate([one, other]))
        movers, into = movers[keep], into[keep]


def _update_pairs(
    a: IntArray,
    b: IntArray,
    s: NDArray[np.float64],
    clusters: _Clusters,
    merged: IntArray,
    similarity: float,
    count: int,
) -> tuple[IntArray, IntArray, NDArray[np.float64]]:
    """Re-point pairs at the merged clusters, recompute their similarity, drop inner and too-far pairs."""
    a, b = np.minimum(a, b), np.maximum(a, b)
    outside = a != b
    a, b, s = a[outside], b[outside], s[outside]
    is_merged = np.zeros(count, dtype=bool)
    is_merged[merged] = True
    changed = is_merged[a] | is_merged[b]
    ca, cb = a[changed], b[changed]
    _, first = np.unique(ca * count + cb, return_index=True)
    ca, cb = ca[first], cb[first]
    cs = clusters.similarity(ca, cb)
    near = cs >= similarity
    return (
        np.concatenate([a[~changed], ca[near]]),
        np.concatenate([b[~changed], cb[near]]),
        np.concatenate([s[~changed], cs[near]]),
    )
