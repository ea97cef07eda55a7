"""Benchmark the PostgreSQL store: load throughput and nearest-face search latency.

    python scripts/bench_db.py [--faces 200000] [--database URL]

Writes a synthetic face cache (512-d unit vectors, two faces per image) and loads it with `facesets load`
into a fresh database (the embedded server unless --database is given), then times 100 nearest-neighbour
queries through the HNSW index (p50 and p95). Person clustering of the loaded faces is reported once the
clustering engine lands.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.cache import META_DTYPE, CacheData, write_npz  # noqa: E402
from facesets.database import DatabaseConfig, connect, database_url  # noqa: E402
from facesets.load import LoadConfig, run_load  # noqa: E402
from facesets.migrations import migrate  # noqa: E402
from facesets.packs import PackIdentity  # noqa: E402
from facesets.records import ImageRecord, ImageStatus  # noqa: E402


def synthetic_cache(path: Path, faces: int) -> None:
    rng = np.random.default_rng(7)
    images = faces // 2
    vectors = rng.normal(size=(faces, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    meta = np.zeros(faces, META_DTYPE)
    meta["image"] = np.arange(faces) // 2
    meta["bbox"] = np.array([10, 20, 110, 140], np.float32) + (np.arange(faces) % 2)[:, None] * 200
    meta["score"], meta["face_short"] = 0.9, 100.0
    records = [
        ImageRecord(f"/photos/{i:07d}.jpg", f"{i:064x}", 100_000, ImageStatus.OK, "", 4000, 3000, 2)
        for i in range(images)
    ]
    identity = PackIdentity("synthetic", "det.onnx", "d" * 64, "rec.onnx", "r" * 64)
    write_npz(path, CacheData(identity, records, meta, vectors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=200_000, help="synthetic faces to load (default 200,000)")
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="facesets-bench-db-"))
    work.chmod(0o777)
    try:
        caches = work / "caches"
        caches.mkdir()
        started = time.perf_counter()
        synthetic_cache(caches / "faces.npz", args.faces)
        print(f"synthetic cache: {args.faces} faces in {time.perf_counter() - started:.1f} s")
        with database_url(DatabaseConfig(args.database, work / "pg")) as url:
            with connect(url) as conn:
                migrate(conn)
            started = time.perf_counter()
            stats = run_load(LoadConfig(DatabaseConfig(url), caches, batch=10_000))
            elapsed = time.perf_counter() - started
            rows = elapsed - stats.index_seconds
            print(
                f"load: {stats.faces_added} faces in {elapsed:.1f} s = {stats.faces_added / elapsed:,.0f} faces/s "
                f"end to end; rows {rows:.1f} s = {stats.faces_added / rows:,.0f} faces/s, HNSW index build "
                f"{stats.index_seconds:.1f} s"
            )
            again = time.perf_counter()
            run_load(LoadConfig(DatabaseConfig(url), caches, batch=10_000))
            print(f"load again (nothing new): {time.perf_counter() - again:.1f} s")
            print("person clustering: not measured yet (the clustering engine has not landed)")
            search_latency(url)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def search_latency(url: str) -> None:
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(11)
    with connect(url) as conn:
        register_vector(conn)
        conn.execute("SET hnsw.ef_search = 64")
        timings = []
        for _ in range(100):
            query = rng.normal(size=512).astype(np.float32)
            query /= np.linalg.norm(query)
            started = time.perf_counter()
            conn.execute("SELECT id FROM face_detections ORDER BY embedding <=> %s LIMIT 10", (query,)).fetchall()
            timings.append(time.perf_counter() - started)
        plan = conn.execute(
            "EXPLAIN SELECT id FROM face_detections ORDER BY embedding <=> %s LIMIT 10", (query,)
        ).fetchall()
    uses_index = any("face_detections_embedding" in line[0] for line in plan)
    p50, p95 = np.percentile(timings, [50, 95]) * 1000
    print(f"search (10 nearest faces, HNSW index used: {uses_index}): p50 {p50:.1f} ms, p95 {p95:.1f} ms")


if __name__ == "__main__":
    main()
