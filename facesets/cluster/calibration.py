"""How close strangers come in *this* library: the merge thresholds of clustering, learned from the library.

A fixed similarity threshold cannot serve every library. A face has ``n - 1`` strangers in a library of ``n``
faces, so the chance that one of them comes closer than a fixed threshold grows with the library: a threshold
that is safe among 18 people merges strangers among thousands. Instead the threshold is set for each library so
that the expected number of strangers above it stays the same whatever the size:

1. **The impostor distribution of this library.** Two faces picked at random are nearly always two people, so
   the robust centre and spread of the similarity of random pairs (median and 1.4826 x MAD of
   :data:`RANDOM_PAIRS` pairs, which the few same-person pairs cannot move) give the impostor mean ``mu`` and
   standard deviation ``sigma`` of this recognizer on these photos. In a library of fewer than
   :data:`MIN_LIBRARY` faces, random pairs are too often one person for that, and the recognizer's own
   statistics (measured on labeled photos, :mod:`facesets.cluster.thresholds`) are used where they are known. Two
   faces of one photo are two people: the library's own known impostor pairs are counted against the
   threshold and reported as a check.
2. **The seed threshold.** Two single faces link only above ``s1 = mu + sigma * z``, where the normal tail
   beyond ``z`` is :data:`FALSE_LINKS_PER_FACE` / (n - 1): a face is expected to have a stranger above ``s1``
   with that probability (one face in a hundred), whatever the size of the library.
3. **Averages of many faces are surer than one pair.** Two clusters of ``a`` and ``b`` faces are compared by
   their average similarity, an average of ``a * b`` pair similarities. Part of the impostor spread belongs to
   the pair of people (look-alikes stay alike: the *shared* fraction ``rho``), part to each single face against
   the other person (a face's own deviation, which averages out only over the faces of its own side: the
   fraction ``q``) and the rest to the pair of photos, so the impostor spread of the average is ``sigma *
   sqrt(v)`` with ``v = rho + q (1/a + 1/b) + (1 - rho - 2 q) / (a b)`` and the threshold for the pair of
   clusters is ``mu + (s1 - mu) * sqrt(v)``: the same confidence, for every size (``v`` is 1 for two single
   faces). ``rho`` and ``q`` are measured on the library too, from the clusters that the seed threshold alone
   forms (:func:`shared_fraction`): the spread of the average similarity of two such clusters and of one face
   against such a cluster; with too few of them to measure, nothing is relaxed.
4. **The tails of averages are heavier.** Look-alikes (relatives, people of one age and origin) stay alike over
   all their photos, so strangers' averages reach further into their upper tail, in units of their spread, than
   two single photos do: on the labeled photos of ``data/celeba`` (both packs), the 99.9th percentile of a
   face's average similarity to a stranger's photos lies 3.83 robust standard deviations above the median,
   that of two strangers' photo sets 4.0-4.05, and that of two single photos of strangers 3.62-3.63. The
   relief keeps the quantile, not the spread: the factor ``sqrt(v)`` is multiplied by
   :data:`AVERAGES_TAIL`, the smaller of those two ratios (1.06; never above 1: the seed itself is unchanged).
   The upper tail cannot be measured on an unlabeled library, where one person's split clusters fill it.
5. **Each face's own spread.** Poor faces (blurred, tiny, turned away) lie close to one another and to
   everyone, so their similarities to strangers spread wider: each face's spread against a fixed random
   cohort of the library (:func:`face_spreads`, libraries of :data:`MIN_LIBRARY` faces or more) scales the
   thresholds of the pairs it is in, by the geometric mean of the two spreads (adaptive score normalisation).
6. **Poor faces neither seed nor bridge.** The recognizer's raw embedding norm falls with the quality of the
   crop (blur, size, pose; on the labeled sets its rank correlation with a face's average similarity to its own
   person is 0.54 and 0.78). A face whose norm lies more than :data:`POOR_Z` robust standard deviations below
   the library's median (:func:`poor_faces`) is left out of clustering and attached afterwards only to a cluster
   that alone would take it (:func:`facesets.cluster.algorithms.cluster_library`).

Everything is deterministic (fixed seeds, canonical order) and costs O(n) time and memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .neighbors import first_of_runs

FALSE_LINKS_PER_FACE = 0.01  # the expected share of faces with a stranger above the seed threshold
AVERAGES_TAIL = 1.06  # the 99.9th percentile of strangers' averages against that of pairs, in spreads (celeba)
RANDOM_PAIRS = 200_000
MIN_CLUSTERS = 12  # seed clusters needed to measure rho and q
MIN_CLUSTER_SIZE = 3
RHO_FLOOR = 0.2  # never relax further than this (the graph is built down to the threshold it gives)
CLUSTER_PAIRS = 50_000
COHORT = 256  # faces each face is compared with to measure its own spread
MIN_LIBRARY = 500  # faces below which the recognizer's impostor statistics are used, where known
SEED = 20_231_201
BLOCK = 65_536  # faces compared with the cohort at once
POOR_Z = 2.0  # robust standard deviations below the library's median norm that make a face poor
MIN_NORMS = 20  # faces with a known norm needed to judge any face poor


@dataclass(frozen=True)
class LibraryEstimate:
    """What clustering learned about one library; recorded in the cluster plan and printed in the summary."""

    faces: int
    impostor_mean: float
    impostor_sd: float
    false_links_per_face: float  # the budget behind the seed threshold
    seed_similarity: float  # two single faces link above this
    shared: float = 1.0  # rho: the impostor spread's share that does not average out (1: no relief)
    own: float = 0.0  # q: the share of a single face's own deviation, averaged out only over its own side
    tail: float = AVERAGES_TAIL  # how much heavier the tail of an average is than that of a pair (see above)
    seed_clusters: int = 0  # the clusters rho and q were measured on
    same_photo_pairs: int = 0  # known impostor pairs (two faces of one photo) in the library
    same_photo_above_seed: int = 0  # of them, how many are above the seed threshold
    given: bool = False  # the seed threshold came from the command line
    source: str = "library"  # where the impostor statistics come from: "library" or "recognizer"
    poor_faces: int = 0  # faces left out of clustering for their low norm (see poor_faces)
    poor_attached: int = 0  # of them, how many one cluster alone took afterwards

    @property
    def floor_similarity(self) -> float:
        """The threshold for the largest clusters: below it, no two clusters ever merge."""
        return float(self._scaled(self._relief(self.shared)))

    @property
    def expected_false_links(self) -> float:
        """Stranger pairs expected above the seed threshold in the whole library, by the normal model."""
        return self.faces * self.false_links_per_face / 2

    def required(
        self, size_a: NDArray[Any], size_b: NDArray[Any], spread_a: Any = 1.0, spread_b: Any = 1.0
    ) -> NDArray[np.float64]:
        """The average similarity two clusters of these sizes need to merge; ``spread_*`` is each cluster's mean
        face spread relative to the library's (:func:`face_spreads`)."""
        share = (
            self.shared
            + self.own * (1.0 / size_a + 1.0 / size_b)
            + (1.0 - self.shared - 2.0 * self.own) / (size_a * size_b)
        )
        result: NDArray[np.float64] = self._scaled(self._relief(share) * np.sqrt(spread_a * spread_b))
        return result

    def _relief(self, share: Any) -> Any:
        """The factor of the seed's distance from the strangers' mean that an average with this share of the
        pair's impostor variance needs: its spread, times the heavier tail of averages (never more than 1)."""
        return np.minimum(1.0, self.tail * np.sqrt(share))

    def _scaled(self, spread: Any) -> Any:
        """The similarity as far above the strangers' mean as the seed, times ``spread``."""
        return self.impostor_mean + (self.seed_similarity - self.impostor_mean) * spread

    def with_shared(self, shared: float, own: float, clusters: int) -> LibraryEstimate:
        return replace(self, shared=shared, own=own, seed_clusters=clusters)

    def with_poor(self, poor: int, attached: int) -> LibraryEstimate:
        return replace(self, poor_faces=poor, poor_attached=attached)

    def lowest_similarity(self) -> float:
        """The least similarity any merge can need, whatever ``rho`` turns out to be: the graph's cut-off."""
        return float(self._scaled(self._relief(RHO_FLOOR)))

    def to_dict(self) -> dict[str, Any]:
        data = {name: round(value, 4) if isinstance(value, float) else value for name, value in asdict(self).items()}
        data["seed_distance"] = round(1.0 - self.seed_similarity, 4)
        data["floor_distance"] = round(1.0 - self.floor_similarity, 4)
        data["expected_false_links"] = round(self.expected_false_links, 2)
        return data


def describe(learned: dict[str, Any]) -> str:
    """:meth:`LibraryEstimate.to_dict` in words."""
    return (
        f"strangers {learned['impostor_mean']:.3f} +- {learned['impostor_sd']:.3f} ({learned['source']}); "
        f"single faces join within {learned['seed_distance']:.3f}, large clusters within "
        f"{learned['floor_distance']:.3f} (rho {learned['shared']:.2f}, q {learned.get('own', 0.0):.2f}); "
        "expected stranger pairs above the "
        f"seed {learned['expected_false_links']:.1f}; same-photo pairs above it "
        f"{learned['same_photo_above_seed']} of {learned['same_photo_pairs']}; poor faces "
        f"{learned.get('poor_faces', 0)}, {learned.get('poor_attached', 0)} of them attached"
    )


def estimate(
    vectors: NDArray[np.float32],
    pairs: tuple[NDArray[np.int64], NDArray[np.int64]],
    distance: float | None = None,
    false_links_per_face: float = FALSE_LINKS_PER_FACE,
    library: NDArray[np.float32] | None = None,
    prior: tuple[float, float] | None = None,
) -> LibraryEstimate:
    """The impostor statistics and the seed threshold for clustering ``vectors`` (``distance``: that threshold).

    ``pairs`` are the faces that share a photo (:func:`same_photo_pairs`). ``library`` is every face of the
    library (default ``vectors``): the impostor statistics are measured on it, or, for a library smaller than
    :data:`MIN_LIBRARY`, taken from ``prior`` (the recognizer's) when given."""
    count = len(vectors)
    library = vectors if library is None else library
    if prior is not None and len(library) < MIN_LIBRARY:
        source, (mean, sd) = "recognizer", prior
    else:
        source, (mean, sd) = "library", impostor_statistics(library)
    if distance is not None:
        seed = 1.0 - distance
    else:
        tail = min(0.5, false_links_per_face / max(count - 1, 1))
        seed = min(mean + sd * NormalDist().inv_cdf(1.0 - tail), 0.999)
    left, right = pairs
    above = int(np.count_nonzero(np.einsum("ij,ij->i", vectors[left], vectors[right]) > seed)) if len(left) else 0
    return LibraryEstimate(
        faces=count,
        impostor_mean=mean,
        impostor_sd=sd,
        false_links_per_face=false_links_per_face,
        seed_similarity=seed,
        same_photo_pairs=len(left),
        same_photo_above_seed=above,
        given=distance is not None,
        source=source,
    )


def impostor_statistics(vectors: NDArray[np.float32]) -> tuple[float, float]:
    """Robust mean and standard deviation of the similarity of random pairs of distinct faces."""
    count = len(vectors)
    if count < 3:
        return 0.0, 0.1
    rng = np.random.default_rng(SEED)
    pairs = min(RANDOM_PAIRS, count * (count - 1) // 2)
    left = rng.integers(0, count, pairs)
    right = (left + rng.integers(1, count, pairs)) % count  # never the face itself
    median, sd = robust_spread(np.einsum("ij,ij->i", vectors[left], vectors[right], dtype=np.float64))
    return median, max(sd, 1e-3)


def robust_spread(values: NDArray[Any]) -> tuple[float, float]:
    """The median and the robust standard deviation (1.4826 x the median absolute deviation) of ``values``."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def face_spreads(vectors: NDArray[np.float32], library: NDArray[np.float32], sd: float) -> NDArray[np.float32]:
    """Each face's own impostor spread, relative to the library's ``sd``: the robust spread of its similarity to
    a fixed random cohort of :data:`COHORT` faces of the library (mostly strangers).

    Poor faces (blurred, tiny, turned away) lie close to one another and to everyone: their similarities to
    strangers spread wider, so a pair of them needs more to link (the per-face cut-off of adaptive score
    normalisation)."""
    rng = np.random.default_rng(SEED)
    cohort = library[np.sort(rng.choice(len(library), min(COHORT, len(library)), replace=False))]
    out = np.empty(len(vectors), np.float32)
    for start in range(0, len(vectors), BLOCK):
        sims = vectors[start : start + BLOCK] @ cohort.T
        median = np.median(sims, axis=1, keepdims=True)
        out[start : start + BLOCK] = 1.4826 * np.median(np.abs(sims - median), axis=1) / sd
    return np.clip(out, 0.5, 3.0)


def shared_fraction(
    sums: NDArray[np.float32],
    sizes: NDArray[np.int64],
    faces: NDArray[np.float32],
    cluster_of: NDArray[np.int64],
    sd: float,
    reliable: NDArray[np.int64] | None = None,
) -> tuple[tuple[float, float] | None, int]:
    """rho and q from the seed clusters (``sums`` and ``sizes``; ``faces[i]`` is in cluster ``cluster_of[i]``;
    only the faces of ``reliable`` are drawn, when given), with the number of clusters of
    :data:`MIN_CLUSTER_SIZE` faces or more they are measured on; ``None`` with fewer than :data:`MIN_CLUSTERS` of
    them (nothing is relaxed).

    The average similarity of two different clusters of ``a`` and ``b`` faces has the variance ``sigma^2 v(a,
    b)`` (see :meth:`LibraryEstimate.required`). Its robust variance over random pairs of clusters and over
    random faces against a cluster they are not in gives two equations in ``rho`` and ``q``, solved with the
    mean ``1/a + 1/b`` and ``1/(a b)`` of each sample. Pairs that are one person split in two sit in the upper
    tail, which the robust spread ignores."""
    big = np.flatnonzero(sizes >= MIN_CLUSTER_SIZE)
    if len(big) < MIN_CLUSTERS:
        return None, len(big)
    rng = np.random.default_rng(SEED)
    pairs = min(CLUSTER_PAIRS, len(big) * (len(big) - 1) // 2)
    left = big[rng.integers(0, len(big), pairs)]
    right = big[(np.searchsorted(big, left) + rng.integers(1, len(big), pairs)) % len(big)]
    pool = reliable if reliable is not None and len(reliable) else np.arange(len(faces))
    face = pool[rng.integers(0, len(pool), CLUSTER_PAIRS)]
    target = big[rng.integers(0, len(big), CLUSTER_PAIRS)]
    other = cluster_of[face] != target
    face, target = face[other], target[other]
    a, b, c = (sizes[index].astype(np.float64) for index in (left, right, target))
    samples = (
        (np.einsum("ij,ij->i", sums[left], sums[right], dtype=np.float64) / (a * b), 1 / a + 1 / b, 1 / (a * b)),
        (np.einsum("ij,ij->i", faces[face], sums[target], dtype=np.float64) / c, 1 + 1 / c, 1 / c),
    )
    # v - w = rho (1 - w) + q (u - 2 w), with u = 1/a + 1/b and w = 1/(a b), for each sample
    rows, values = [], []
    for averages, u, w in samples:
        variance = (robust_spread(averages)[1] / sd) ** 2
        rows.append([1.0 - float(w.mean()), float(u.mean() - 2 * w.mean())])
        values.append(variance - float(w.mean()))
    rho, own = (float(x) for x in np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)[0])
    if own <= 0.0:  # no single-face share: rho alone, from the pairs of clusters
        rho, own = values[0] / rows[0][0], 0.0
    rho = min(1.0, max(RHO_FLOOR, rho))
    return (rho, min(own, (1.0 - rho) / 2)), len(big)


def poor_cutoff(norms: NDArray[np.float32] | None) -> float | None:
    """The norm below which a face of this library is poor: :data:`POOR_Z` robust standard deviations (1.4826 x
    MAD) below the median of the known norms; ``None`` when too few are known (caches written before norms
    were kept hold NaN: such a face is never poor)."""
    if norms is None:
        return None
    known = norms[np.isfinite(norms)]
    if len(known) < MIN_NORMS:
        return None
    middle, spread = robust_spread(known)
    return middle - POOR_Z * spread


def poor_faces(norms: NDArray[np.float32] | None) -> NDArray[np.bool_] | None:
    """The faces whose norm is below :func:`poor_cutoff` (``None``: none can be judged, or none is poor)."""
    cutoff = poor_cutoff(norms)
    if norms is None or cutoff is None:
        return None
    poor: NDArray[np.bool_] = np.isfinite(norms) & (norms < cutoff)
    return poor if poor.any() else None


def same_photo_pairs(photos: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every pair of faces that share a photo, ``left < right`` (faces per photo are few: this stays small)."""
    order = np.argsort(photos, kind="stable")
    starts = np.flatnonzero(first_of_runs(photos[order]))
    sizes = np.diff(np.r_[starts, len(photos)])
    left: list[NDArray[np.int64]] = []
    right: list[NDArray[np.int64]] = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        members = order[start : start + size]
        i, j = np.triu_indices(size, 1)
        left.append(members[i])
        right.append(members[j])
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate(left), np.concatenate(right)
    return np.minimum(a, b), np.maximum(a, b)
