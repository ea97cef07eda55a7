"""`make demo`: build a small photo library, queue it, embed its faces, and show where the outputs are.

Uses ../shared/data/faces and the scrfd2.5g-mbf pack from ../shared/models when present; otherwise the
photo that ships with insightface (when installed) and the buffalo_l pack from ~/.insightface/models.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.cli import main  # noqa: E402


def build_library(shared: Path, library: Path) -> int:
    faces = shared / "data" / "faces"
    sources = sorted(faces.rglob("*.jpg")) if faces.is_dir() else []
    if not sources:
        try:
            import insightface

            sources = [Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"]
        except ImportError:
            raise SystemExit(f"no sample photos: neither {faces} nor insightface's t1.jpg is available") from None
    for source in sources:
        relative = source.relative_to(faces) if faces in source.parents else Path(source.name)
        target = library / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return len(sources)


def main_demo() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "demo")
    args = parser.parse_args()
    out: Path = args.out
    library, queue, cache = out / "photos", out / "queue.json", out / "caches" / "faces.npz"
    if out.exists():
        shutil.rmtree(out)
    cache.parent.mkdir(parents=True)
    count = build_library(args.shared, library)
    print(f"demo: sample library of {count} photos in {library}")
    pack = args.shared / "models" / "scrfd2.5g-mbf"
    model = ["--model-dir", str(pack)] if pack.is_dir() else ["--model-pack", "buffalo_l"]
    steps = [
        ["queue", "add", "--queue", str(queue), str(library)],
        ["embed", "--queue", str(queue), "--cache", str(cache), *model],
        ["cache", "info", str(cache)],
    ]
    for step in steps:
        print(f"\n$ facesets {' '.join(step)}", flush=True)
        code = main(step)
        if code:
            return code
    print(f"\ndemo: queue {queue}\ndemo: face cache {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main_demo())
