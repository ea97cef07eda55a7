"""Score clustering on labeled photo folders, through the path the CLI takes and at the engine level.

For each labeled set and model pack: queue and embed every photo (``facesets queue add`` + ``facesets embed``),
then

- **cli**: ``facesets cluster`` with its defaults into an empty face-sets folder (matching, the clustering
  engine, the refine gates and ``min_faces``), each labeled photo's subject face (InsightFace's ``max_num``
  rule) scored by the set it lands in; a face in no set counts as its own singleton;
- **engine**: every face clustered by :func:`facesets.cluster.algorithms.cluster` alone (no gates), each algorithm at
  its own default: ours (the library-adaptive default), the original face-sets (average linkage at 0.55), the
  original rbv (components at similarity 0.65) and Immich (DBSCAN at 0.5, three faces).

Scores: BCubed precision, recall and F1, pairwise F1, ARI, the number of sets against the number of people and
the share of labeled faces left unassigned. A labeled set is a folder with ``labels.json`` mapping a photo's
path inside the folder to its person (``--labels FILE``; both sets of ``../shared/data`` are built in).

    python scripts/eval_clusters.py --shared ../shared [--set faces --set celeba] [--pack scrfd500m-mbf] [--mode fast]
    python scripts/eval_clusters.py --labels /data/lfw/labels.json --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.artifacts.cache import load_cache
from facesets.artifacts.facesetdir import face_key
from facesets.artifacts.queue import append_entries, scan_folders
from facesets.base.settings import Mode
from facesets.cluster.algorithms import Algorithm, ClusterParams, cluster_library
from facesets.cluster.calibration import describe, poor_faces
from facesets.cluster.evaluation import Scores, score, subject_face
from facesets.cluster.identify import ClusterConfig, run_cluster
from facesets.embed.queue import EmbedConfig, run_embed

# The seed algorithms at their own published defaults (cosine distances).
SEEDS = {
    Algorithm.AVERAGE: 0.55,  # original face-sets
    Algorithm.COMPONENTS: 0.35,  # original rbv cluster --threshold 0.65 (similarity)
    Algorithm.DBSCAN: 0.50,  # Immich maxDistance 0.5, minFaces 3
}
BUILT_IN = ("faces", "celeba")


def embed(folder: Path, pack: Path, work: Path, mode: Mode = Mode.REFERENCE) -> Path:
    """The folder's face cache made by ``pack`` in ``mode`` (kept in ``work``: a second run reuses it)."""
    work.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode is Mode.REFERENCE else f"-{mode.value}"
    queue, cache = work / "queue.json", work / f"{pack.name}{suffix}.npz"
    if not queue.exists():
        append_entries(queue, scan_folders([folder]).entries)
    run_embed(EmbedConfig(queue=queue, cache=cache, model_dir=pack, mode=mode))
    return cache


def subjects(cache: Path, folder: Path, labels: dict[str, str]) -> tuple[list[str | None], list[int | None], Any]:
    """Per labeled photo (sorted by path): its subject face's key and cache row (None: no face found)."""
    data = load_cache(cache)
    images = data.meta["image"]
    by_path = {
        str(Path(record.path).resolve().relative_to(folder.resolve())): i for i, record in enumerate(data.images)
    }
    keys: list[str | None] = []
    rows: list[int | None] = []
    for relative in sorted(labels):
        index = by_path.get(relative)
        found = np.flatnonzero(images == index) if index is not None else np.zeros(0, np.int64)
        if index is None or not len(found):
            keys.append(None)
            rows.append(None)
            continue
        record = data.images[index]
        row = int(found[subject_face(data.meta["bbox"][found], record.width, record.height)])
        keys.append(face_key(record.content_hash, data.meta["bbox"][row]))
        rows.append(row)
    return keys, rows, data


def report(predicted: Sequence[str | None], truth: Sequence[str]) -> dict[str, Any]:
    """Scores with unassigned faces as singletons, plus sets, people and the unassigned share."""
    labels = [value if value is not None else f"unassigned-{i}" for i, value in enumerate(predicted)]
    scores: Scores = score(labels, truth)
    assigned = [value for value in predicted if value is not None]
    return {
        **scores.as_dict(),
        "sets": len(set(assigned)),
        "people": len(set(truth)),
        "unassigned": round(1.0 - len(assigned) / max(len(predicted), 1), 4),
    }


def cli_path(cache: Path, keys: list[str | None], truth: list[str], work: Path) -> dict[str, Any]:
    """``facesets cluster`` with its defaults into an empty face-sets folder."""
    plan_path, sets = work / "clusters.json", work / "sets"
    summary = run_cluster(ClusterConfig(caches=(cache,), sets_dir=sets, plan=plan_path))
    plan = orjson.loads(plan_path.read_bytes())
    set_of = {member["key"]: f"set{entry['set']}" for entry in plan["identities"] for member in entry["members"]}
    result = report([set_of.get(key) if key else None for key in keys], truth)
    result["estimate"] = summary.as_dict()["estimate"]
    result["cluster_distance"] = result["estimate"]["seed_distance"]
    return result


def engine(data: Any, rows: list[int | None], truth: list[str]) -> dict[str, Any]:
    vectors, photos = data.embeddings, data.meta["image"].astype(np.int64)
    runs = {"graph": ClusterParams(Algorithm.GRAPH)}
    runs.update({algorithm.value: ClusterParams(algorithm, distance) for algorithm, distance in SEEDS.items()})
    results = {}
    for name, params in runs.items():
        labels, library = cluster_library(vectors, photos, params, poor=poor_faces(data.meta["norm"]))
        results[name] = report([f"c{labels[r]}" if r is not None else None for r in rows], truth)
        results[name]["distance"] = round(1.0 - library.seed_similarity, 4)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--set", action="append", choices=BUILT_IN, help="a labeled set of <shared>/data")
    parser.add_argument("--labels", type=Path, action="append", help="labels.json of another labeled folder")
    parser.add_argument("--pack", action="append", help="pack name under <shared>/models (default: all)")
    parser.add_argument("--work", type=Path, help="keep queues and caches here (re-runs skip the embedding)")
    parser.add_argument(
        "--mode", choices=[mode.value for mode in Mode], default=Mode.REFERENCE.value, help="embed --mode"
    )
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args()
    folders = [args.shared / "data" / name for name in (args.set or ([] if args.labels else BUILT_IN))]
    folders += [path.parent for path in args.labels or []]
    packs = args.pack or sorted(p.name for p in (args.shared / "models").iterdir() if p.is_dir())
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work_root = args.work or Path(scratch)
        for folder in folders:
            labels = json.loads((folder / "labels.json").read_text())
            truth = [labels[path] for path in sorted(labels)]
            for name in packs:
                work = work_root / folder.name / name
                cache = embed(folder, args.shared / "models" / name, work, Mode(args.mode))
                keys, rows, data = subjects(cache, folder, labels)
                results[f"{folder.name}/{name}"] = {
                    "photos": len(labels),
                    "faces": len(data.meta),
                    "cli": cli_path(cache, keys, truth, Path(tempfile.mkdtemp(dir=scratch))),
                    "engine": engine(data, rows, truth),
                }
                if not args.json:
                    print_result(f"{folder.name}/{name}", results[f"{folder.name}/{name}"])
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def print_result(name: str, result: dict[str, Any]) -> None:
    print(f"{name}: {result['photos']} labeled photos, {result['faces']} faces", flush=True)
    header = f"{'':<22} {'dist':>6} {'B3 P':>6} {'B3 R':>6} {'B3 F1':>6} {'pairF1':>6} {'ARI':>6} {'sets':>5}"
    print(f"  {header} {'people':>6} {'unassigned':>10}")
    rows = [("cli (facesets cluster)", result["cli"], result["cli"]["cluster_distance"])]
    rows += [(f"engine {algorithm}", row, row["distance"]) for algorithm, row in result["engine"].items()]
    for label, row, distance in rows:
        print(
            f"  {label:<22} {distance:>6.3f} {row['bcubed_precision']:>6.3f} {row['bcubed_recall']:>6.3f} "
            f"{row['bcubed_f1']:>6.3f} {row['pairwise_f1']:>6.3f} {row['ari']:>6.3f} {row['sets']:>5} "
            f"{row['people']:>6} {row['unassigned']:>10.1%}"
        )
    if result["cli"].get("estimate"):
        print(f"  learned by facesets cluster: {describe(result['cli']['estimate'])}")


if __name__ == "__main__":
    sys.exit(main())
