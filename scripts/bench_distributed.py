"""Benchmark ``facesets embed --scheduler`` (Dask workers) against the local ``facesets embed``, same run.

    python scripts/bench_distributed.py [--shared ../shared] [--packs scrfd500m-mbf] [--corpora web,camera]
                                        [--shard-size 64] [--work bench]

Corpora: those of scripts/bench_embed.py ("web": 200 small photos; "camera": 100 JPEGs of 12 MP). For each
corpus and pack, all measured in this run, each command end to end (queue in, cache out, a fresh cache):
- local: `facesets embed` on this machine;
- dask 1 worker / 2 workers: `facesets embed --scheduler` against a LocalCluster of that many worker processes
  (loopback), started before the clock starts, fresh for each run (so each worker loads its model inside the
  measured time, as the local run does): 1 worker with `--nthreads 2` (two shards at once, one inference thread
  each; also shown with `--nthreads 1`, two inference threads per shard), 2 workers with `--nthreads 1` and
  one inference thread each, so that every variant uses the cores once;
- the model-only bound of scripts/bench_embed.py (our two sessions on inputs prepared in memory).
It prints img/s, the ratios (1 worker / local; 2 workers / bound) and the driver's CPU time per image (user +
system of the `facesets embed` process), beside the local run's CPU per image.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_embed import build_camera, build_web, model_bound  # noqa: E402  (this script's folder)
from distributed import LocalCluster  # noqa: E402

from facesets.artifacts.queue import QueueEntry, write_queue  # noqa: E402
from facesets.base.settings import Mode  # noqa: E402


def embed_command(files: list[Path], pack_dir: Path, work: Path, name: str, extra: list[str]) -> tuple[float, float]:
    """(img/s, CPU seconds per image of the command's own process) of one `facesets embed` run."""
    queue, cache = work / f"queue-{name}.json", work / f"cache-{name}.npz"
    cache.unlink(missing_ok=True)
    write_queue(queue, [QueueEntry(str(p), None, "", p.stat().st_size) for p in files])
    command = [sys.executable, "-m", "facesets", "embed", "--queue", str(queue), "--cache", str(cache)]
    command += ["--model-dir", str(pack_dir), "--json", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{name}: facesets embed exited {done.returncode}: {done.stderr}")
    stats = orjson.loads(done.stdout)
    assert stats["embedded"] == len(files), stats
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return len(files) / elapsed, cpu / len(files)


def on_cluster(
    files: list[Path], pack_dir: Path, work: Path, workers: int, threads: int, shard_size: int
) -> tuple[float, float]:
    cores = os.cpu_count() or 1
    concurrency = max(1, cores // (workers * threads))
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    ) as cluster:
        extra = ["--scheduler", cluster.scheduler_address, "--shard-size", str(shard_size)]
        name = f"dask{workers}x{threads}"
        return embed_command(files, pack_dir, work, name, [*extra, "--concurrency", str(concurrency)])


def bench(pack: str, corpus: str, files: list[Path], shared: Path, work: Path, shard_size: int) -> None:
    pack_dir = shared / "models" / pack
    work.mkdir(parents=True, exist_ok=True)
    bound = model_bound(files, pack_dir, Mode.REFERENCE)
    local, local_cpu = embed_command(files, pack_dir, work, "local", [])
    one1, _ = on_cluster(files, pack_dir, work, 1, 1, shard_size)
    one, one_cpu = on_cluster(files, pack_dir, work, 1, 2, shard_size)
    two, two_cpu = on_cluster(files, pack_dir, work, 2, 1, shard_size)
    print(f"\n== {pack} / {corpus} ({len(files)} images, shards of {shard_size}) ==")
    print(f"model-only bound      {bound:7.2f} img/s")
    print(f"local facesets embed  {local:7.2f} img/s  {local / bound:.2f} of bound  CPU {local_cpu * 1e3:6.1f} ms/img")
    print(f"dask, 1 worker        {one:7.2f} img/s  {one / local:.2f} of local  driver CPU {one_cpu * 1e3:5.1f} ms/img")
    print(
        f"  (--nthreads 1:      {one1:7.2f} img/s  {one1 / local:.2f} of local: each shard's pipeline fills and drains)"
    )
    print(
        f"dask, 2 workers       {two:7.2f} img/s  {two / bound:.2f} of bound  driver CPU {two_cpu * 1e3:5.1f} ms/img  "
        f"({two / local:.2f} of local)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--packs", default="scrfd500m-mbf")
    parser.add_argument("--corpora", default="web,camera")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    corpora = {"web": build_web, "camera": build_camera}
    for name in args.corpora.split(","):
        files = corpora[name](args.shared, args.work / name)
        for pack in args.packs.split(","):
            bench(pack, name, files, args.shared, args.work / f"dist-{name}-{pack}", args.shard_size)


if __name__ == "__main__":
    main()
