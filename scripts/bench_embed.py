"""Benchmark the embed stage against the naive InsightFace loop, on two corpora built here.

    python scripts/bench_embed.py [--shared ../shared] [--packs scrfd500m-mbf,scrfd2.5g-mbf] [--work bench]

Corpora: "web" = every photo of ../shared/data/faces plus insightface's t1.jpg, cycled to 200 files (each
copy made byte-unique, so content dedup cannot help us); "camera" = 100 JPEGs of 4000x3000 (quality 90)
made by upscaling photos of the same folder and compositing 3-5 of them onto one canvas; "large" = 40 JPEGs
made the same way at 24, 35 or 48 MP.

For each pack and corpus it prints, all measured in this run:
- naive: FaceAnalysis(name=pack, root=...) with default options, cv2.imread + app.get in a loop;
- ours: `facesets embed` end to end (queue in, cache out) with --mode reference (default) and fast;
- model-only bound: our detector + recognizer sessions, same worker count, on inputs already decoded,
  resized and aligned in memory;
- agreement with naive: faces matched by box IoU > 0.5; faces of >= 90 px found by one only; cosine
  similarity of matched embeddings (median, min) for faces of >= 90 px.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.artifacts.cache import load_cache  # noqa: E402
from facesets.artifacts.queue import QueueEntry, write_queue  # noqa: E402
from facesets.base.settings import Mode  # noqa: E402
from facesets.embed.queue import EmbedConfig, run_embed  # noqa: E402
from facesets.models.decode import decode  # noqa: E402
from facesets.models.faces import align, build_engine  # noqa: E402
from facesets.models.packs import resolve_pack  # noqa: E402
from facesets.models.runtime import RuntimeOptions  # noqa: E402

MIN_COMPARED_FACE = 90.0


def t1_path() -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


def build_web(shared: Path, folder: Path, count: int = 200) -> list[Path]:
    sources = [*sorted((shared / "data" / "faces").rglob("*.jpg")), t1_path()]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        source = sources[index % len(sources)]
        target = folder / f"{index:04d}-{source.name}"
        if not target.exists():
            target.write_bytes(source.read_bytes() + f"\nbench copy {index}".encode())
        files.append(target)
    return files


def build_camera(shared: Path, folder: Path, count: int = 100) -> list[Path]:
    return build_composites(shared, folder, count, "camera", lambda rng: (4000, 3000), 1234)


LARGE_SIZES = ((6000, 4000), (7200, 4800), (8000, 6000))  # 24, 35 and 48 MP


def build_large(shared: Path, folder: Path, count: int = 40) -> list[Path]:
    return build_composites(shared, folder, count, "large", lambda rng: rng.choice(LARGE_SIZES), 4321)


def build_composites(shared: Path, folder: Path, count: int, prefix: str, canvas_size: Any, seed: int) -> list[Path]:
    """JPEGs (quality 90) of 3-5 photos of data/faces upscaled onto one canvas of ``canvas_size(rng)``."""
    sources = sorted((shared / "data" / "faces").rglob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = []
    for index in range(count):
        target = folder / f"{prefix}-{index:03d}.jpg"
        files.append(target)
        if target.exists():
            continue
        canvas_width, canvas_height = canvas_size(rng)
        canvas = Image.new("RGB", (canvas_width, canvas_height), tuple(rng.randrange(60, 200) for _ in range(3)))
        slots = rng.randint(3, 5)
        width = canvas_width // slots
        for slot in range(slots):
            with Image.open(rng.choice(sources)) as opened:
                photo = opened.convert("RGB")
            height = rng.randint(1400, 2800) * canvas_height // 3000
            scale = min(height / photo.height, (width - 20) / photo.width)
            size = (max(1, int(photo.width * scale)), max(1, int(photo.height * scale)))
            resized = photo.resize(size, Image.Resampling.BICUBIC)
            x = slot * width + (width - resized.width) // 2
            y = rng.randint(0, canvas_height - resized.height)
            canvas.paste(resized, (x, y))
        canvas.save(target, "JPEG", quality=90)
    return files


def naive(pack: str, root: Path, files: list[Path]) -> tuple[float, dict[str, list[Any]]]:
    import cv2
    from insightface.app import FaceAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        app = FaceAnalysis(name=pack, root=str(root))
        app.prepare(ctx_id=0)
        results = {}
        started = time.perf_counter()
        for path in files:
            img = cv2.imread(str(path))
            results[str(path)] = app.get(img)
        elapsed = time.perf_counter() - started
    return len(files) / elapsed, results


def ours(files: list[Path], pack_dir: Path, work: Path, mode: Mode) -> tuple[float, Path]:
    queue = work / f"queue-{mode.value}.json"
    cache = work / f"cache-{mode.value}.npz"
    for stale in (queue, cache):
        stale.unlink(missing_ok=True)
    write_queue(queue, [QueueEntry(str(p), None, "", p.stat().st_size) for p in files])
    started = time.perf_counter()
    stats = run_embed(EmbedConfig(queue=queue, cache=cache, model_dir=pack_dir, mode=mode))
    elapsed = time.perf_counter() - started
    assert stats.embedded == len(files), stats
    return len(files) / elapsed, cache


def model_bound(files: list[Path], pack_dir: Path, mode: Mode) -> float:
    """Our two sessions alone, as ``mode`` runs them, on detector inputs and aligned crops prepared in memory."""
    workers = os.cpu_count() or 1
    options = RuntimeOptions(("CPUExecutionProvider",), 1)
    engine = build_engine(resolve_pack(pack_dir), options, square=mode is Mode.REFERENCE)
    prepared = []
    for path in files:
        data = path.read_bytes()
        image = decode(data)
        blobs = [engine.detector.prepare(image.pixels, size)[0] for size in engine.detector.det_sizes]
        faces = engine.analyze(image, lambda scale, source=data: decode(source, scale))  # type: ignore[misc]
        full = decode(data, max(min(1.0, 112.0 / max(f.face_short, 1.0)) for f in faces)) if faces else image
        crops = [align(full.pixels, f.kps * full.scale) for f in faces]
        prepared.append((blobs, crops))
    detector, recognizer = engine.detector, engine.recognizer

    def run(item: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
        blobs, crops = item
        for blob in blobs:
            detector.session.run(detector.output_names, {detector.input_name: blob})
        recognizer.embed(crops)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, prepared[:4]))
        started = time.perf_counter()
        list(pool.map(run, prepared))
        elapsed = time.perf_counter() - started
    return len(files) / elapsed


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


def agreement(cache: Path, reference: dict[str, list[Any]]) -> dict[str, float]:
    data = load_cache(cache)
    ours_by_path: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
    for row, vector in zip(data.meta, data.embeddings, strict=True):
        path = data.images[int(row["image"])].path
        ours_by_path.setdefault(path, []).append((row["bbox"], vector, float(row["face_short"])))
    sims, only_ours, only_naive, matched = [], 0, 0, 0
    for path, ref_faces in reference.items():
        mine = ours_by_path.get(path, [])
        used: set[int] = set()
        for face in ref_faces:
            short = float(min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]))
            scores = [(iou(face.bbox, box), i) for i, (box, _, _) in enumerate(mine) if i not in used]
            best = max(scores, default=(0.0, -1))
            if best[0] <= 0.5:
                only_naive += short >= MIN_COMPARED_FACE
                continue
            used.add(best[1])
            matched += 1
            if short >= MIN_COMPARED_FACE:
                sims.append(float(mine[best[1]][1] @ face.normed_embedding))
        only_ours += sum(1 for i, (_, _, short) in enumerate(mine) if i not in used and short >= MIN_COMPARED_FACE)
    return {
        "matched": matched,
        "only_ours_90px": only_ours,
        "only_naive_90px": only_naive,
        "cos_median": float(np.median(sims)) if sims else float("nan"),
        "cos_min": float(np.min(sims)) if sims else float("nan"),
        "compared": len(sims),
    }


def bench(pack: str, corpus: str, files: list[Path], shared: Path, work: Path) -> None:
    pack_dir = shared / "models" / pack
    work.mkdir(parents=True, exist_ok=True)
    naive_rate, reference = naive(pack, shared, files)
    print(f"\n== {pack} / {corpus} ({len(files)} images) ==")
    print(f"naive FaceAnalysis loop         {naive_rate:7.2f} images/s")
    for mode in (Mode.REFERENCE, Mode.FAST):
        bound = model_bound(files, pack_dir, mode)
        print(f"model-only bound, {mode.value:<9}     {bound:7.2f} images/s")
        rate, cache = ours(files, pack_dir, work, mode)
        agree = agreement(cache, reference)
        print(
            f"ours --mode {mode.value:<9}       {rate:7.2f} images/s  x{rate / naive_rate:.2f} naive  "
            f"{rate / bound:.2f} of bound | matched {agree['matched']}, >=90px only ours {agree['only_ours_90px']}, "
            f"only naive {agree['only_naive_90px']}; cos (>=90px, n={agree['compared']}) median "
            f"{agree['cos_median']:.4f} min {agree['cos_min']:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--packs", default="scrfd500m-mbf,scrfd2.5g-mbf")
    parser.add_argument("--corpora", default="web,camera,large")
    parser.add_argument("--work", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    corpora = {"web": build_web, "camera": build_camera, "large": build_large}
    for name in args.corpora.split(","):
        files = corpora[name](args.shared, args.work / name)
        sizes = [Image.open(f).size for f in files]
        print(f"corpus {name}: {len(files)} files, median {np.median([w * h for w, h in sizes]) / 1e6:.2f} MP")
        for pack in args.packs.split(","):
            bench(pack, name, files, args.shared, args.work / f"{name}-{pack}")


if __name__ == "__main__":
    main()
