"""Cluster synthetic faces at library scale: wall time, peak memory and BCubed F1.

Faces follow the measured statistics of the mbf recognizer: same person cosine mean 0.60 (1st percentile
about 0.1), different people mean 0.01 (99th percentile about 0.26); identity sizes long-tailed with many
singletons; a fifth of the photos hold two faces (cannot-link). The generator prints the statistics it
produced. Each run clusters in a fresh child process, so its peak RSS is the clustering's alone.
The baseline is the original rbv algorithm (connected components) on the same data, in the same run.
An algorithm runs at its default distance, or at another one written ``name@distance`` (``graph@0.55``).

    python scripts/bench_cluster.py [--sizes 100000,1000000] [--algorithms graph,graph@0.55,components]
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

from facesets.clustering import Algorithm, ClusterParams, cluster
from facesets.evaluation import score

DIM = 512
CENTRE_DIMS = 40  # identity centres live in a subspace: gives different people the measured spread


def generate(count: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.minimum(np.ceil(rng.pareto(1.1, size=count) + 0.5).astype(np.int64), 5000)
    sizes = sizes[np.cumsum(sizes) <= count]
    sizes = np.r_[sizes, np.ones(count - sizes.sum(), np.int64)]
    people = np.repeat(np.arange(len(sizes)), sizes)
    basis = np.linalg.qr(rng.standard_normal((DIM, CENTRE_DIMS)))[0].T.astype(np.float32)
    centres = rng.standard_normal((len(sizes), CENTRE_DIMS)).astype(np.float32) @ basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # per-face quality q: cos(i, j) ~ q_i q_j; a tenth of the faces are poor (blur, profile, tiny)
    poor = rng.random(count) < 0.1
    quality = np.where(poor, rng.uniform(0.1, 0.45, count), np.sqrt(rng.beta(6.0, 2.5, count)))
    quality = quality.astype(np.float32)[:, None]
    vectors = np.empty((count, DIM), np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        noise = rng.standard_normal((stop - start, DIM)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        q = quality[start:stop]
        vectors[start:stop] = q * centres[people[start:stop]] + np.sqrt(1 - q * q) * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(count)
    vectors, people = vectors[order], people[order]
    photos = np.arange(count, dtype=np.int64)
    pairs = rng.choice(count, size=(count // 10, 2), replace=False)
    photos[pairs[:, 1]] = photos[pairs[:, 0]]  # two faces of one photo: different people by construction
    different = people[pairs[:, 0]] != people[pairs[:, 1]]
    photos[pairs[~different, 1]] = pairs[~different, 1]
    return vectors, people, photos


def statistics(vectors: np.ndarray, people: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    left, right = rng.integers(0, len(vectors), 200_000), rng.integers(0, len(vectors), 200_000)
    sims = np.einsum("ij,ij->i", vectors[left], vectors[right])
    other = sims[people[left] != people[right]]
    order = np.argsort(people, kind="stable")
    same_left = order[:-1][people[order][1:] == people[order][:-1]]
    same_right = order[1:][people[order][1:] == people[order][:-1]]
    same = np.einsum("ij,ij->i", vectors[same_left], vectors[same_right])
    return {
        "same_mean": round(float(same.mean()), 3),
        "same_p1": round(float(np.percentile(same, 1)), 3),
        "different_mean": round(float(other.mean()), 3),
        "different_p99": round(float(np.percentile(other, 99)), 3),
        "identities": len(np.unique(people)),
        "singletons": int((np.bincount(people) == 1).sum()),
    }


def child(data: str, algorithm: str, distance: float) -> None:
    loaded = np.load(data)
    vectors, photos = loaded["vectors"], loaded["photos"]
    started = time.perf_counter()
    labels = cluster(vectors, photos, ClusterParams(Algorithm(algorithm), distance))
    elapsed = time.perf_counter() - started
    np.save(data + ".labels.npy", labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"seconds": round(elapsed, 1), "peak_gb": round(peak, 2)}))


def run(data: Path, people: np.ndarray, algorithm: str, distance: float) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(data), algorithm, str(distance)]
    result: dict[str, float] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    labels = np.load(str(data) + ".labels.npy")
    result["bcubed_f1"] = round(score(labels, people).bcubed_f1, 4)
    return result


DISTANCES = {"graph": 0.80, "average": 0.55, "components": 0.35, "dbscan": 0.50}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--algorithms", default="graph,components")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for count in (int(size) for size in args.sizes.split(",")):
            vectors, people, photos = generate(count)
            print(f"{count:,} faces: {statistics(vectors, people, np.random.default_rng(1))}", flush=True)
            data = Path(work) / f"faces-{count}.npz"
            np.savez(data, vectors=vectors, photos=photos)
            del vectors, photos
            results = {}
            for algorithm in args.algorithms.split(","):
                name, _, distance = algorithm.partition("@")
                results[algorithm] = run(data, people, name, float(distance or DISTANCES[name]))
                print(f"  {algorithm:<11} {results[algorithm]}", flush=True)
            if "components" in results and "graph" in results:
                ratio = results["components"]["seconds"] / max(results["graph"]["seconds"], 1e-9)
                print(f"  graph time vs components (baseline) in this run: {1 / ratio:.2f}x the baseline's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
