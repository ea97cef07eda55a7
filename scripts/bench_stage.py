"""Immich staging throughput against the fake Immich server with an injected per-request latency.

The server runs in a child process (its CPU is not the stager's). Every asset has a big face, so each costs
two requests (faces, original): the ideal rate with W workers is W / (2 x latency). For 1, 8 and 32 workers the
script prints assets/s, the fraction of that ideal, the speed-up over 1 worker measured in the same run, and
the stager's CPU use in cores (process CPU time / wall time).

    python scripts/bench_stage.py [--assets 2000] [--latency 0.05] [--workers 1,8,32] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facesets.sources.immich.client import ClientOptions, Secret
from facesets.sources.immich.stage import StageConfig, run_stage
from tests.fakeimmich import FakeAsset, FakeImmich, FakeUser, fake_uuid

KEY = "bench-key"
USER = FakeUser(fake_uuid(1, salt=99), "bench", KEY)


def base_photo(shared: Path) -> bytes:
    """A real photo if ../shared is there, else a small generated JPEG (the bytes only travel)."""
    photo = shared / "data" / "faces" / "celeb5" / "madonna" / "train_01.jpg"
    if photo.exists():
        return photo.read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 90, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


def library(count: int, photo: bytes) -> list[FakeAsset]:
    """``count`` distinct photos (a unique tail after the JPEG end marker), each with one 400 px face."""
    return [
        FakeAsset(
            fake_uuid(number),
            f"/photos/{number // 500:03d}/img{number:05d}.jpg",
            photo + number.to_bytes(8, "big"),
            faces=[(100, 100, 500, 520)],
            preview=(1440, 1080),
            size=(4032, 3024),
        )
        for number in range(1, count + 1)
    ]


def serve(count: int, latency: float, shared: Path) -> None:
    with FakeImmich(library(count, base_photo(shared)), [USER]) as server:
        server.faults.latency = latency
        print(server.url, flush=True)
        sys.stdin.read()  # until the parent closes the pipe


def measure(url: str, workers: int, folder: Path) -> dict[str, float]:
    config = StageConfig(
        user="bench", url=url, key=Secret(KEY), staging=folder, workers=workers, client=ClientOptions(backoff=0.05)
    )
    wall, cpu = time.perf_counter(), time.process_time()
    stats = run_stage(config)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"staged": stats.staged_count, "wall": wall, "rate": stats.staged_count / wall, "cores": cpu / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", default="1,8,32")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.assets, args.latency, args.shared)
        return 0
    command = [sys.executable, __file__, "--serve", "--assets", str(args.assets), "--latency", str(args.latency)]
    child = subprocess.Popen([*command, "--shared", str(args.shared)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    url = child.stdout.readline().decode().strip()
    print(f"{args.assets} assets, {args.latency * 1000:.0f} ms per request, 2 requests per asset; server {url}")
    columns = ("workers", 7), ("assets/s", 9), ("ideal", 7), ("of ideal", 8), ("vs first", 11), ("CPU cores", 9)
    print(" ".join(f"{name:>{width}}" for name, width in columns), f"{'wall s':>7}")
    single = None
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            with tempfile.TemporaryDirectory(prefix="bench-stage-") as folder:
                result = measure(url, workers, Path(folder))
            assert result["staged"] == args.assets, result
            ideal = workers / (2 * args.latency)
            single = single or result["rate"] / workers
            print(
                f"{workers:>7} {result['rate']:>9.1f} {ideal:>7.1f} {result['rate'] / ideal:>8.2f} "
                f"{result['rate'] / single:>10.2f}x {result['cores']:>9.2f} {result['wall']:>7.1f}"
            )
    finally:
        child.stdin.close()
        child.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
