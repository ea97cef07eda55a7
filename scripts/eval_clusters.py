"""Score every clustering algorithm on a labeled photo folder with the real pipeline.

Embeds all faces of every photo with each model pack (facesets embed), clusters all of them, and scores
each labeled photo's subject face (InsightFace's max_num rule) against labels.json: BCubed precision,
recall and F1, pairwise F1 and ARI, for every algorithm at its default and across a threshold grid.

    python scripts/eval_clusters.py --shared ../shared [--pack scrfd500m-mbf] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.cache import load_cache
from facesets.clustering import Algorithm, ClusterParams, cluster
from facesets.embed import EmbedConfig, run_embed
from facesets.evaluation import score, subject_face
from facesets.queue import append_entries, scan_folders

# Each algorithm's own default: ours from the model table; the seeds' published values.
DEFAULTS = {
    Algorithm.GRAPH: 0.80,  # fr_feature's table entry (facesets.thresholds)
    Algorithm.AVERAGE: 0.55,  # original face-sets
    Algorithm.COMPONENTS: 0.35,  # original rbv cluster --threshold 0.65 (similarity)
    Algorithm.DBSCAN: 0.50,  # Immich maxDistance 0.5, minFaces 3
}
GRID = [round(value, 2) for value in np.arange(0.30, 0.96, 0.02)]


def embed(folder: Path, pack: Path, work: Path) -> Path:
    queue, cache = work / "queue.json", work / f"{pack.name}.npz"
    if not queue.exists():
        append_entries(queue, scan_folders([folder]).entries)
    run_embed(EmbedConfig(queue=queue, cache=cache, model_dir=pack))
    return cache


def subjects(cache: Path, folder: Path, labels: dict[str, str]) -> tuple[Any, Any, list[int | None], list[str]]:
    data = load_cache(cache)
    images = data.meta["image"]
    chosen: list[int | None] = []
    truth = []
    by_path = {
        str(Path(record.path).resolve().relative_to(folder.resolve())): i for i, record in enumerate(data.images)
    }
    for relative, person in sorted(labels.items()):
        index = by_path[relative]
        rows = np.flatnonzero(images == index)
        record = data.images[index]
        chosen.append(
            int(rows[subject_face(data.meta["bbox"][rows], record.width, record.height)]) if len(rows) else None
        )
        truth.append(person)
    return data.embeddings, images.astype(np.int64), chosen, truth


def evaluate(vectors: Any, photos: Any, chosen: list[int | None], truth: list[str], params: ClusterParams) -> Any:
    labels = cluster(vectors, photos, params)
    predicted = [f"c{labels[row]}" if row is not None else f"missing{i}" for i, row in enumerate(chosen)]
    return score(predicted, truth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--pack", action="append", help="pack name under <shared>/models (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = args.shared / "data" / "faces"
    labels = json.loads((folder / "labels.json").read_text())
    packs = args.pack or sorted(p.name for p in (args.shared / "models").iterdir() if p.is_dir())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        for name in packs:
            cache = embed(folder, args.shared / "models" / name, Path(work))
            vectors, photos, chosen, truth = subjects(cache, folder, labels)
            results[name] = {}
            for algorithm in Algorithm:
                default = evaluate(vectors, photos, chosen, truth, ClusterParams(algorithm, DEFAULTS[algorithm]))
                grid = [
                    (evaluate(vectors, photos, chosen, truth, ClusterParams(algorithm, d)).bcubed_f1, d) for d in GRID
                ]
                best_f1, best_d = max(grid)
                results[name][algorithm.value] = {
                    "default_distance": DEFAULTS[algorithm],
                    "default": default.as_dict(),
                    "best_distance": best_d,
                    "best_bcubed_f1": round(best_f1, 4),
                    "grid": {str(d): round(f, 4) for f, d in grid},
                }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, by_algorithm in results.items():
        print(f"{name}: {len(labels)} labeled photos, subject face per photo, all faces clustered")
        header = f"{'algorithm':<11} {'dist':>5} {'B3 P':>6} {'B3 R':>6} {'B3 F1':>6} {'pair F1':>7} {'ARI':>6}"
        print(f"  {header}   best F1 @ dist")
        for algorithm, row in by_algorithm.items():
            d = row["default"]
            print(
                f"  {algorithm:<11} {row['default_distance']:>5.2f} {d['bcubed_precision']:>6.3f} "
                f"{d['bcubed_recall']:>6.3f} {d['bcubed_f1']:>6.3f} {d['pairwise_f1']:>7.3f} {d['ari']:>6.3f}"
                f"   {row['best_bcubed_f1']:.3f} @ {row['best_distance']:.2f}"
            )
        ours = by_algorithm["graph"]["default"]["bcubed_f1"]
        best_seed = max(row["best_bcubed_f1"] for a, row in by_algorithm.items() if a != "graph")
        print(f"  graph at its default vs the best seed algorithm at its best threshold: {ours:.3f} vs {best_seed:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
