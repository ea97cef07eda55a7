"""Benchmark the index skip machinery on a synthetic gallery tree.

    python scripts/bench_index.py [--galleries 2000] [--files 100] [--scale 1] [--work bench/index]

Builds a tree of galleries (``index.json``, ``tn/``, small files) and measures, in one run:
- bare walk: a Python walk that stat()s every file (the floor every indexer pays);
- the first index with the face model replaced by a no-op (read + hash + state, no decode, no model: the
  library's ``run_index`` with a model whose ``reads_pixels`` is False, in a child process);
- a no-op re-index of the unchanged tree, as users run it (``facesets index``: target <= 1.5x the bare walk
  and >= 100,000 files/s);
- a re-index after 1% of the galleries gained one file (the no-op model again);
each as a separate process, with its peak memory, and again with the tree doubled (memory must stay flat).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:  # the bare walk child imports nothing of facesets
    from facesets.models.faces import FaceEngine
    from facesets.models.packs import PackIdentity


def build_tree(root: Path, galleries: int, files: int) -> int:
    """Create (or reuse) the tree; return the number of image files."""
    marker = root / f".complete-{galleries}x{files}"
    if marker.exists():
        return galleries * files
    if root.exists():
        shutil.rmtree(root)
    per_chunk = 100
    for number in range(galleries):
        gallery = root / f"chunk{number // per_chunk:04d}" / f"gallery{number:06d}"
        (gallery / "tn").mkdir(parents=True)
        (gallery / "index.json").write_bytes(b'{"title": "gallery %d"}' % number)
        for index in range(files):
            payload = b"synthetic %d/%d " % (number, index)
            (gallery / f"{index:05d}.jpg").write_bytes(payload * (1 + (number + index) % 40))
    marker.write_text("ok")
    return galleries * files


def bare_walk(root: Path) -> int:
    count = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                else:
                    entry.stat()
                    count += 1
    return count


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its own, from wait4)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def index_command(root: Path, caches: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--index-only", str(root), str(caches)]


def cli_index_command(root: Path, caches: Path) -> list[str]:
    """The command line (no pack needed: the state records the model, and an unchanged tree reads no file)."""
    command = [sys.executable, "-m", "facesets", "index", "--target", str(root), "--caches", str(caches)]
    return [*command, "--no-clip", "--json"]


class NoFaces:
    """A face model that does no face work and reads no pixels: the run times the skip machinery alone."""

    reads_pixels = False

    @property
    def identity(self) -> PackIdentity:
        from facesets.models.packs import PackIdentity

        return PackIdentity("none", "none", "0" * 64, "none", "0" * 64)

    def engine(self) -> FaceEngine:
        raise AssertionError("a model that reads no pixels is never asked for an engine")


def index_only(root: Path, caches: Path) -> None:
    """``facesets index`` with the no-op face model, in this process."""
    from facesets.embed.index import IndexConfig, run_index

    stats = run_index(IndexConfig(targets=(root,), caches=caches, no_clip=True), face_model=NoFaces())
    print(json.dumps(stats.as_dict()))


def walk_command(root: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--walk-only", str(root)]


def run_scale(work: Path, galleries: int, files: int) -> None:
    root, caches = work / f"tree-{galleries}x{files}", work / f"caches-{galleries}x{files}"
    started = time.perf_counter()
    total = build_tree(root, galleries, files)
    print(
        f"\n== {galleries} galleries x {files} files = {total} files (tree ready in "
        f"{time.perf_counter() - started:.0f} s) =="
    )
    if caches.exists():
        shutil.rmtree(caches)
    walk, walk_rss = min(timed(walk_command(root)) for _ in range(3))
    first, first_rss = timed(index_command(root, caches))
    noop, noop_rss = min(timed(cli_index_command(root, caches)) for _ in range(3))
    for number in range(0, galleries, 100):
        gallery = root / f"chunk{number // 100:04d}" / f"gallery{number:06d}"
        (gallery / f"added-{time.time_ns()}.jpg").write_bytes(b"new file %d" % number)
    changed, changed_rss = timed(index_command(root, caches))
    print(f"bare walk (stat every file)   {walk:7.2f} s  {total / walk:10,.0f} files/s  peak {walk_rss:6.0f} MiB")
    print(f"first index (no-op model)     {first:7.2f} s  {total / first:10,.0f} files/s  peak {first_rss:6.0f} MiB")
    print(
        f"no-op re-index                {noop:7.2f} s  {total / noop:10,.0f} files/s  peak {noop_rss:6.0f} MiB"
        f"  = {noop / walk:.2f}x the bare walk"
    )
    print(
        f"re-index, 1% galleries +1     {changed:7.2f} s  {total / changed:10,.0f} files/s  peak {changed_rss:6.0f} MiB"
        f"  = {changed / walk:.2f}x the bare walk"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--galleries", type=int, default=2000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--scale", type=int, default=1, help="also run with the tree doubled this many times")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "index")
    parser.add_argument("--walk-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index-only", type=Path, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.walk_only:
        bare_walk(args.walk_only)
        return
    if args.index_only:
        index_only(*args.index_only)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    for factor in range(args.scale + 1):
        run_scale(args.work, args.galleries * 2**factor, args.files)


if __name__ == "__main__":
    main()
