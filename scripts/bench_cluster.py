"""Cluster synthetic faces at library scale: wall time, peak memory, BCubed precision, recall and F1.

The generator is built to look like a real library's embeddings: identity centres in a 100-d subspace, and each
face's own variation partly in a 10-d subspace of its own and partly in the identities' subspace (so that part
of the strangers' similarity belongs to the pair of people, part to the single face against everyone else's
photos and the rest to the pair of photos, in the shares measured on real photos), a per-face quality (a tenth
are poor: blur, profile, tiny), long-tailed identity sizes with many singletons, and a fifth of the photos with
two faces (cannot-link), look-alike groups of people, and a raw norm per face that tracks its quality as loosely
as on real photos. It prints its
genuine/impostor similarity statistics beside those of a real labeled set when given one
(``--reference CACHE --labels labels.json``, e.g. the cache ``scripts/eval_clusters.py --work`` keeps for
``../shared/data/celeba``). Each run clusters in a fresh child process, so its peak RSS is the
clustering's alone. The baselines are the original tools' algorithms at their own defaults, on the same data in
the same run: rbv's connected components at similarity 0.65 and face-sets' average linkage at 0.55.
An algorithm runs at its default (``graph``: learned from the library) or at ``name@distance``.

    python scripts/bench_cluster.py [--sizes 100000,1000000] [--algorithms graph,components@0.35] [--singles 0.31]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cluster.algorithms import Algorithm, ClusterParams, cluster_library
from facesets.cluster.calibration import poor_faces, robust_spread
from facesets.cluster.evaluation import score

DIM = 512
CENTRE_DIMS = 100  # identity centres: the strangers' similarity shared by the pair of people
FACE_DIMS = 10  # each face's own variation: the part that averages out over many photos of the other side
# The share of a face's own variation that lies among the identities: a face's average similarity to the photos
# of a stranger varies more than that of two strangers' photo sets, since the face's own deviation does not
# average out (on celeba the shares of the impostor variance that survive averaging are 0.59 and 0.40, and
# z-scores of those averages reach 2.7 and 2.9 at the 99th percentile, 3.8 and 4.0 at the 99.9th)
FACE_IN_CENTRES = 0.7
NORM_NOISE = 0.18  # spread of the raw norm around quality
# Look-alikes: people fall into groups (sex, age, origin) whose centres share a direction, which gives the average
# similarity of two people the upper tail real photos show (celeba: 99th percentile 0.178, 99.9th 0.248).
LOOKALIKE_GROUPS = 20
LOOKALIKE = 0.25


def generate(
    count: int, seed: int = 7, singles: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Faces, their people, photos and raw norms. ``singles``: that share of the faces are people with one photo
    (a news archive: thousands of people seen once); by default the sizes' long tail alone decides (about 5%)."""
    rng = np.random.default_rng(seed)
    if singles is None:
        sizes = np.minimum(np.ceil(rng.pareto(1.1, size=count) + 0.5).astype(np.int64), 5000)
        sizes = sizes[np.cumsum(sizes) <= count]
    else:
        sizes = np.minimum(np.ceil(rng.pareto(1.1, size=count) + 1.5).astype(np.int64), 5000)
        sizes = sizes[np.cumsum(sizes) <= count * (1 - singles)]
    sizes = np.r_[sizes, np.ones(count - sizes.sum(), np.int64)]
    people = np.repeat(np.arange(len(sizes)), sizes)
    basis = np.linalg.qr(rng.standard_normal((DIM, CENTRE_DIMS + FACE_DIMS)))[0].T.astype(np.float32)
    centre_basis, face_basis = basis[:CENTRE_DIMS], basis[CENTRE_DIMS:]
    centres = rng.standard_normal((len(sizes), CENTRE_DIMS)).astype(np.float32) @ centre_basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    groups = rng.standard_normal((LOOKALIKE_GROUPS, CENTRE_DIMS)).astype(np.float32) @ centre_basis
    groups /= np.linalg.norm(groups, axis=1, keepdims=True)
    group = rng.integers(0, LOOKALIKE_GROUPS, len(sizes))
    centres = np.sqrt(1 - LOOKALIKE) * centres + np.sqrt(LOOKALIKE) * groups[group]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # per-face quality q: cos(i, j) ~ q_i q_j for one person; a tenth of the faces are poor (blur, profile, tiny)
    poor = rng.random(count) < 0.1
    quality = np.where(poor, rng.uniform(0.1, 0.45, count), np.sqrt(rng.beta(5.0, 2.5, count)))
    # the recognizer's raw norm tracks quality, loosely (NORM_NOISE matches data/celeba's rank correlation)
    norms = (1.0 + quality + NORM_NOISE * rng.standard_normal(count)).astype(np.float32)
    quality = quality.astype(np.float32)[:, None]
    vectors = np.empty((count, DIM), np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        own = rng.standard_normal((stop - start, FACE_DIMS)).astype(np.float32) @ face_basis
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        among = rng.standard_normal((stop - start, CENTRE_DIMS)).astype(np.float32) @ centre_basis
        among /= np.linalg.norm(among, axis=1, keepdims=True)
        noise = np.sqrt(1 - FACE_IN_CENTRES) * own + np.sqrt(FACE_IN_CENTRES) * among
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        q = quality[start:stop]
        vectors[start:stop] = q * centres[people[start:stop]] + np.sqrt(1 - q * q) * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(count)
    vectors, people, norms = vectors[order], people[order], norms[order]
    photos = np.arange(count, dtype=np.int64)
    pairs = rng.choice(count, size=(count // 6, 2), replace=False)  # a fifth of the photos hold two faces
    photos[pairs[:, 1]] = photos[pairs[:, 0]]  # two faces of one photo: different people by construction
    different = people[pairs[:, 0]] != people[pairs[:, 1]]
    photos[pairs[~different, 1]] = pairs[~different, 1]
    return vectors, people, photos, norms


def statistics(
    vectors: np.ndarray, people: np.ndarray, norms: np.ndarray, rng: np.random.Generator
) -> dict[str, float]:
    """Genuine and impostor similarity statistics, the impostor spread's shared fraction (rho) and the rank
    correlation of the raw norm with each face's average similarity to its own person."""
    left, right = rng.integers(0, len(vectors), 200_000), rng.integers(0, len(vectors), 200_000)
    sims = np.einsum("ij,ij->i", vectors[left], vectors[right])
    other = sims[(people[left] != people[right]) & (left != right)]
    order = np.argsort(people, kind="stable")
    same_left = order[:-1][people[order][1:] == people[order][:-1]]
    same_right = order[1:][people[order][1:] == people[order][:-1]]
    same = np.einsum("ij,ij->i", vectors[same_left], vectors[same_right])
    counts = np.bincount(np.unique(people, return_inverse=True)[1])
    identities = _identities(vectors, people)
    low = norms < np.quantile(norms, 0.1)
    low_left, low_right = np.flatnonzero(low)[rng.integers(0, low.sum(), (2, 200_000))]
    low_pairs = np.einsum("ij,ij->i", vectors[low_left], vectors[low_right])[people[low_left] != people[low_right]]
    return {
        "same_mean": round(float(same.mean()), 3),
        "same_sd": round(float(same.std()), 3),
        "same_p5": round(float(np.percentile(same, 5)), 3),
        "different_mean": round(float(other.mean()), 3),
        "different_sd": round(float(other.std()), 3),
        "different_p99.9": round(float(np.percentile(other, 99.9)), 3),
        "poor_different_sd": round(float(low_pairs.std()), 3),  # strangers among the tenth with the lowest norm
        "poor_different_p99.9": round(float(np.percentile(low_pairs, 99.9)), 3),
        "shared_rho": round(_shared(identities, float(other.var())), 3),
        **_single(vectors, identities, float(other.var())),
        **_identity_pairs(identities),
        "norm_rank_corr": round(_norm_correlation(vectors, people, norms), 3),
        "identities": len(counts),
        "singletons": int((counts == 1).sum()),
    }


Identities = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
SHARE_IDENTITIES, PAIR_IDENTITIES = 150, 400  # identities the shares and the pairs' percentiles are measured on


def _identities(vectors: np.ndarray, people: np.ndarray) -> Identities:
    """Each face's identity index, the identities' sizes, up to :data:`PAIR_IDENTITIES` identities of 8 to 60
    faces and their mean vectors (``None``: fewer than two such identities)."""
    inverse = np.unique(people, return_inverse=True)[1]
    counts = np.bincount(inverse)
    chosen = np.flatnonzero((counts >= 8) & (counts <= 60))[:PAIR_IDENTITIES]
    if len(chosen) < 2:
        return None
    return inverse, counts, chosen, np.stack([vectors[inverse == i].mean(axis=0) for i in chosen])


def _shared(identities: Identities, variance: float) -> float:
    """rho measured with the labels: the variance of two identities' average similarity beyond 1/(a b)."""
    if identities is None:
        return float("nan")
    _, counts, chosen, means = identities
    chosen, means = chosen[:SHARE_IDENTITIES], means[:SHARE_IDENTITIES]
    sizes = counts[chosen].astype(np.float64)
    i, j = np.triu_indices(len(chosen), 1)
    averages = np.einsum("ij,ij->i", means[i], means[j])
    single = float(np.mean(1.0 / (sizes[i] * sizes[j])))
    return (float(averages.var()) / variance - single) / (1.0 - single)


def _single(vectors: np.ndarray, identities: Identities, variance: float) -> dict[str, float]:
    """rho for one face against the photos of a stranger (``single_rho``, above ``shared_rho`` by the part of
    the face's own variation that does not average out), and the upper tail of those averages as robust z-scores
    (``single_z_p99``, ``single_z_p99.9``; a normal tail: 2.33 and 3.09)."""
    if identities is None:
        return {}
    inverse, counts, chosen, means = identities
    chosen, means = chosen[:SHARE_IDENTITIES], means[:SHARE_IDENTITIES]
    faces = np.random.default_rng(2).choice(len(vectors), min(len(vectors), 2000), replace=False)
    other = inverse[faces][:, None] != chosen[None, :]
    averages = (vectors[faces] @ means.T)[other]
    single = float(np.mean(np.broadcast_to(1.0 / counts[chosen], other.shape)[other]))
    middle, spread = robust_spread(averages)
    z = (averages - middle) / spread
    return {
        "single_rho": round((float(averages.var()) / variance - single) / (1.0 - single), 3),
        "single_z_p99": round(float(np.percentile(z, 99)), 2),
        "single_z_p99.9": round(float(np.percentile(z, 99.9)), 2),
    }


def _identity_pairs(identities: Identities) -> dict[str, float]:
    """Upper percentiles of the average similarity of two people (people with 8 to 60 faces, at most 400)."""
    if identities is None:
        return {}
    means = identities[3]
    i, j = np.triu_indices(len(means), 1)
    averages = np.einsum("ij,ij->i", means[i], means[j])
    return {
        "people_pair_p99": round(float(np.percentile(averages, 99)), 3),
        "people_pair_p99.9": round(float(np.percentile(averages, 99.9)), 3),
    }


def _norm_correlation(vectors: np.ndarray, people: np.ndarray, norms: np.ndarray) -> float:
    """Spearman correlation of the raw norm with the face's average similarity to the rest of its person."""
    inverse = np.unique(people, return_inverse=True)[1]
    counts = np.bincount(inverse)
    sums = np.zeros((len(counts), vectors.shape[1]), np.float64)
    np.add.at(sums, inverse, vectors)
    many = counts[inverse] >= 2
    genuine = (np.einsum("ij,ij->i", vectors[many], sums[inverse[many]]) - 1.0) / (counts[inverse[many]] - 1)
    norm_rank, genuine_rank = (np.argsort(np.argsort(values)).astype(np.float64) for values in (norms[many], genuine))
    return float(np.corrcoef(norm_rank, genuine_rank)[0, 1])


def reference_statistics(cache: Path, labels: Path) -> dict[str, float]:
    """The same statistics on a real labeled set: each labeled photo's subject face."""
    from facesets.artifacts.cache import load_cache
    from facesets.cluster.evaluation import subject_face

    data = load_cache(cache)
    truth = json.loads(labels.read_text())
    folder = labels.parent.resolve()
    rows, people = [], []
    for index, record in enumerate(data.images):
        name = str(Path(record.path).resolve().relative_to(folder))
        found = np.flatnonzero(data.meta["image"] == index)
        if name in truth and len(found):
            rows.append(found[subject_face(data.meta["bbox"][found], record.width, record.height)])
            people.append(truth[name])
    return statistics(data.embeddings[rows], np.asarray(people), data.meta["norm"][rows], np.random.default_rng(1))


def child(data: str, algorithm: str, distance: float | None) -> None:
    loaded = np.load(data)
    vectors, photos, norms = loaded["vectors"], loaded["photos"], loaded["norms"]
    started = time.perf_counter()
    params = ClusterParams(Algorithm(algorithm), distance)
    labels, library = cluster_library(vectors, photos, params, poor=poor_faces(norms))
    elapsed = time.perf_counter() - started
    np.save(data + ".labels.npy", labels)
    peak = _own_peak_gb()
    names = ("seed_distance", "floor_distance", "shared", "poor_faces", "poor_attached")
    learned = {name: library.to_dict()[name] for name in names}
    print(json.dumps({"seconds": round(elapsed, 1), "peak_gb": round(peak, 2), **learned}))


def _own_peak_gb() -> float:
    """This process's peak resident memory since it started (VmHWM; getrusage's maximum also counts what a
    forked child inherited from its parent before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run(data: Path, people: np.ndarray, algorithm: str, distance: float | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(data), algorithm, str(distance)]
    result: dict[str, float] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    labels = np.load(str(data) + ".labels.npy")
    scores = score(labels, people)
    result.update(
        precision=round(scores.bcubed_precision, 4),
        recall=round(scores.bcubed_recall, 4),
        f1=round(scores.bcubed_f1, 4),
    )
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], None if sys.argv[4] == "None" else float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--algorithms", default="graph,components@0.35,average@0.55")
    parser.add_argument(
        "--singles", type=float, help="the share of faces of people with one photo (e.g. 0.31, a news archive)"
    )
    parser.add_argument("--reference", type=Path, help="a face cache of a labeled set, to compare statistics")
    parser.add_argument("--labels", type=Path, help="the labels.json of --reference's photos")
    args = parser.parse_args()
    if args.singles is not None and not 0.0 <= args.singles < 1.0:
        parser.error(f"--singles is a share of the faces, from 0 up to (not including) 1, got {args.singles:g}")
    if args.reference and args.labels:
        print(f"real ({args.labels.parent.name}): {reference_statistics(args.reference, args.labels)}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        for count in (int(size) for size in args.sizes.split(",")):
            vectors, people, photos, norms = generate(count, singles=args.singles)
            stats = statistics(vectors, people, norms, np.random.default_rng(1))
            print(f"synthetic {count:,} faces: {stats}", flush=True)
            data = Path(work) / f"faces-{count}.npz"
            np.savez(data, vectors=vectors, photos=photos, norms=norms)
            del vectors, photos
            results = {}
            for algorithm in args.algorithms.split(","):
                name, _, distance = algorithm.partition("@")
                results[algorithm] = run(data, people, name, float(distance) if distance else None)
                print(f"  {algorithm:<16} {results[algorithm]}", flush=True)
            baseline = next((results[a] for a in results if a.startswith("components")), None)
            if baseline and "graph" in results:
                ratio = results["graph"]["seconds"] / max(baseline["seconds"], 1e-9)
                print(f"  graph time vs components (baseline) in this run: {ratio:.2f}x the baseline's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
