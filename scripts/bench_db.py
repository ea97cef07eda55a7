"""Benchmark the PostgreSQL store: load throughput, person clustering, and search latency.

    python scripts/bench_db.py [--faces 200000] [--database URL] [--skip-cluster]

1. Writes a synthetic face cache (512-d unit vectors: identities of about 50 faces each with an inner cosine
   similarity of about 0.55, two faces of different identities per photo) and loads it with ``facesets load``
   into a fresh database (the embedded server unless --database); then a CLIP store (one vector per photo,
   around 500 topics) the same way. Baseline, in the same run: row-by-row ``executemany`` INSERTs of the same
   faces into the same table (rolled back).
2. Person clustering of the loaded faces with ``facesets cluster --database`` in a child process: time, peak
   memory (the child's maximum resident set size), and the share of faces put with their own identity.
3. 100 text-search queries (each near one topic) through ``facesets.store.search.nearest_images`` (HNSW): p50/p95,
   against the same queries as an exact scan (the index disabled), and the recall of the index's top 20.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.artifacts.cache import META_DTYPE, CacheData, write_npz  # noqa: E402
from facesets.artifacts.clipstore import ClipStore  # noqa: E402
from facesets.artifacts.records import ImageRecord, ImageStatus  # noqa: E402
from facesets.models.clip import ClipIdentity  # noqa: E402
from facesets.models.packs import PackIdentity  # noqa: E402
from facesets.store.database import DatabaseConfig, connect, database_url  # noqa: E402
from facesets.store.load import LoadConfig, run_load  # noqa: E402
from facesets.store.migrations import migrate  # noqa: E402
from facesets.store.search import nearest_images  # noqa: E402

FACES_PER_IDENTITY = 50
NOISE = 0.9  # inner similarity 1 / (1 + NOISE**2), about 0.55
THRESHOLDS = ["--match-distance", "0.45", "--cluster-distance", "0.55", "--export-distance", "0.45"]


def unit(rows: np.ndarray) -> np.ndarray:
    result: np.ndarray = (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)
    return result


def synthetic_faces(faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and their identity: face j belongs to identity j mod n, so a photo's two faces differ."""
    rng = np.random.default_rng(7)
    identities = max(2, faces // FACES_PER_IDENTITY)
    centres = unit(rng.normal(size=(identities, 512)))
    truth = np.arange(faces) % identities
    vectors = np.empty((faces, 512), np.float32)
    for start in range(0, faces, 50_000):
        part = truth[start : start + 50_000]
        noise = rng.normal(size=(len(part), 512)).astype(np.float32) * (NOISE / np.sqrt(512))
        vectors[start : start + len(part)] = unit(centres[part] + noise)
    return vectors, truth


def write_faces(caches: Path, vectors: np.ndarray) -> None:
    faces = len(vectors)
    images = faces // 2
    meta = np.zeros(faces, META_DTYPE)
    meta["image"] = np.arange(faces) // 2
    meta["bbox"] = np.array([10, 20, 110, 140], np.float32) + (np.arange(faces) % 2)[:, None] * 200
    meta["score"], meta["face_short"] = 0.9, 100.0
    records = [
        ImageRecord(f"/photos/{i:07d}.jpg", f"{i:064x}", 100_000, ImageStatus.OK, "", 4000, 3000, 2)
        for i in range(images)
    ]
    identity = PackIdentity("synthetic", "det.onnx", "d" * 64, "rec.onnx", "r" * 64)
    write_npz(caches / "faces.npz", CacheData(identity, records, meta, vectors))


def write_clip(caches: Path, images: int) -> None:
    """One CLIP vector per photo, around 500 topics (real image vectors are far from uniform)."""
    store = ClipStore(caches / "clip.sqlite", ClipIdentity("ViT-B-32__openai", "c" * 64))
    rng = np.random.default_rng(8)
    topics = clip_topics()
    for start in range(0, images, 20_000):
        count = min(20_000, images - start)
        block = unit(topics[rng.integers(0, 500, count)] + rng.normal(size=(count, 512)) * (1.2 / np.sqrt(512)))
        for offset, vector in enumerate(block):
            store.add(f"{start + offset:064x}", vector)
        store.commit()
    store.close()


def clip_topics() -> np.ndarray:
    return unit(np.random.default_rng(9).normal(size=(500, 512)))


def naive_rate(url: str, vectors: np.ndarray, count: int = 5_000) -> float:
    """Faces/s of row-by-row executemany INSERTs into the same table, rolled back (the baseline)."""
    from pgvector.psycopg import register_vector

    rows = [
        (f"{i // 2:064x}", [10.0 + 200 * (i % 2), 20.0, 110.0, 140.0], [0.0] * 10, 0.9, 100.0, "synthetic", vectors[i])
        for i in range(count)
    ]
    with connect(url, autocommit=False) as conn:
        register_vector(conn)
        conn.execute("DROP INDEX face_detections_embedding")  # as the load does for an empty table
        conn.execute(
            "INSERT INTO images(id, size) SELECT DISTINCT image_id, 1 FROM unnest(%s::text[]) image_id",
            ([r[0] for r in rows],),
        )
        started = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO face_detections(image_id, box, keypoints, score, face_short, model, embedding) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        elapsed = time.perf_counter() - started
        conn.rollback()
    return count / elapsed


def bench_load(url: str, caches: Path, vectors: np.ndarray) -> None:
    baseline = naive_rate(url, vectors)
    started = time.perf_counter()
    stats = run_load(LoadConfig(DatabaseConfig(url), caches, batch=10_000))
    elapsed = time.perf_counter() - started
    rows = elapsed - stats.index_seconds
    rate = stats.faces_added / rows
    print(
        f"load faces: {stats.faces_added:,} faces, {stats.images_added:,} photos in {elapsed:.1f} s. Rows {rows:.1f} s "
        f"= {rate:,.0f} faces/s (target 20,000; row-by-row INSERT baseline {baseline:,.0f}/s, ratio "
        f"{rate / baseline:.1f}x); HNSW index build {stats.index_seconds:.1f} s "
        f"({stats.faces_added / elapsed:,.0f} faces/s with it)"
    )
    write_clip(caches, len(vectors) // 2)
    started = time.perf_counter()
    stats = run_load(LoadConfig(DatabaseConfig(url), caches, batch=10_000))
    elapsed = time.perf_counter() - started
    print(
        f"load CLIP: {stats.clip_added:,} vectors in {elapsed:.1f} s (HNSW index build {stats.index_seconds:.1f} s; "
        f"the faces already there: {stats.faces_added} added)"
    )
    again = time.perf_counter()
    run_load(LoadConfig(DatabaseConfig(url), caches, batch=10_000))
    print(f"load again (nothing new): {time.perf_counter() - again:.1f} s")


def bench_cluster(url: str, truth: np.ndarray) -> None:
    command = [sys.executable, "-m", "facesets", "cluster", "--database", url, "--json", *THRESHOLDS]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"facesets cluster failed: {result.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stats = orjson.loads(result.stdout)
    with connect(url) as conn:
        found = conn.execute(
            "SELECT f.image_id, f.box[1] > 100, a.person_id FROM face_persons a "
            "JOIN face_detections f ON f.id = a.face_id"
        ).fetchall()
    rows = [(int(image, 16) * 2 + int(second), int(person)) for image, second, person in found]
    print(
        f"person clustering: {stats['faces']:,} faces in {elapsed:.1f} s (peak memory {peak_mb:,.0f} MB); "
        f"{stats['new_persons']:,} persons for {len(np.unique(truth)):,} identities, "
        f"{len(rows) / stats['faces']:.1%} of faces assigned; purity {purity(rows, truth):.4f}"
    )


def purity(rows: list[tuple[int, int]], truth: np.ndarray) -> float:
    """Share of assigned faces whose person's majority identity is their own (rows: face number, person)."""
    faces = np.array([face for face, _ in rows], np.int64)
    persons = np.array([person for _, person in rows], np.int64)
    identity = truth[faces]
    order = np.lexsort((identity, persons))
    pairs = np.stack([persons[order], identity[order]], axis=1)
    _, counts = np.unique(pairs, axis=0, return_counts=True)
    keys = np.unique(pairs, axis=0)[:, 0]
    best: dict[int, int] = {}
    for person, count in zip(keys.tolist(), counts.tolist(), strict=True):
        best[person] = max(best.get(person, 0), count)
    return float(sum(best.values()) / max(1, len(rows)))


def bench_search(url: str) -> None:
    rng = np.random.default_rng(11)
    topics = clip_topics()[rng.integers(0, 500, 100)]
    queries = unit(topics + rng.normal(size=(100, 512)) * (1.5 / np.sqrt(512)))  # a query about one topic
    timings, exact, recall = [], [], []
    with connect(url) as conn:
        for query in queries:
            started = time.perf_counter()
            hits = nearest_images(conn, query, 20)
            timings.append(time.perf_counter() - started)
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                started = time.perf_counter()
                truth = nearest_images(conn, query, 20)
                exact.append(time.perf_counter() - started)
            # found among the true top 20 (by score, so exact ties count either way)
            recall.append(sum(hit.score >= truth[-1].score for hit in hits) / 20)
    p50, p95 = np.percentile(timings, [50, 95]) * 1000
    e50, e95 = np.percentile(exact, [50, 95]) * 1000
    print(
        f"search (20 images, HNSW): p50 {p50:.1f} ms, p95 {p95:.1f} ms; exact scan p50 {e50:.1f} ms, p95 {e95:.1f} ms "
        f"(p50 ratio {e50 / p50:.1f}x); recall@20 {np.mean(recall):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=200_000, help="synthetic faces to load (default 200,000)")
    parser.add_argument("--database", default=None)
    parser.add_argument("--skip-cluster", action="store_true", help="leave out person clustering")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="facesets-bench-db-"))
    work.chmod(0o777)
    try:
        caches = work / "caches"
        caches.mkdir()
        started = time.perf_counter()
        vectors, truth = synthetic_faces(args.faces)
        write_faces(caches, vectors)
        print(
            f"synthetic inputs: {args.faces:,} faces, {args.faces // 2:,} photos "
            f"in {time.perf_counter() - started:.1f} s"
        )
        with database_url(DatabaseConfig(args.database, work / "pg")) as url:
            with connect(url) as conn:
                migrate(conn)
            bench_load(url, caches, vectors)
            del vectors
            if not args.skip_cluster:
                bench_cluster(url, truth)
            bench_search(url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
