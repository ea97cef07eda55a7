"""`make demo`: build a small gallery library, index it, embed it through a queue, and show the outputs.

Uses ../shared/data/faces and the scrfd2.5g-mbf pack from ../shared/models when present; otherwise the
photo that ships with insightface (when installed) and the buffalo_l pack from ~/.insightface/models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.cli import main  # noqa: E402
from facesets.clip import resolve_clip  # noqa: E402
from facesets.errors import FacesetsError  # noqa: E402


def sample_photos(shared: Path) -> tuple[Path, list[Path]]:
    faces = shared / "data" / "faces"
    sources = sorted(faces.rglob("*.jpg")) if faces.is_dir() else []
    if sources:
        return faces, sources
    try:
        import insightface
    except ImportError:
        raise SystemExit(f"no sample photos: neither {faces} nor insightface's t1.jpg is available") from None
    t1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return t1.parent, [t1]


def build_library(shared: Path, library: Path) -> int:
    """Galleries (index.json + tn/) of at most 12 photos each, named after the folders they come from."""
    base, sources = sample_photos(shared)
    groups: dict[str, list[Path]] = {}
    for source in sources:
        groups.setdefault(source.parent.relative_to(base).as_posix().replace("/", "-") or "photos", []).append(source)
    for name, photos in groups.items():
        for start in range(0, len(photos), 12):
            gallery = library / name / f"gallery-{start // 12 + 1:02d}"
            (gallery / "tn").mkdir(parents=True)
            (gallery / "index.json").write_text(json.dumps({"title": f"{name} {start // 12 + 1}"}))
            for photo in photos[start : start + 12]:
                shutil.copyfile(photo, gallery / photo.name)
    return len(sources)


def main_demo() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "demo")
    args = parser.parse_args()
    out: Path = args.out
    library, caches = out / "library", out / "caches"
    queue, embed_cache = out / "queue.json", out / "embed" / "faces.npz"
    if out.exists():
        shutil.rmtree(out)
    embed_cache.parent.mkdir(parents=True)
    count = build_library(args.shared, library)
    print(f"demo: sample library of {count} photos in galleries under {library}")
    pack = args.shared / "models" / "scrfd2.5g-mbf"
    model = ["--model-dir", str(pack)] if pack.is_dir() else ["--model-pack", "buffalo_l"]
    clip: list[str] = []
    try:
        resolve_clip(None)
    except FacesetsError:
        print("demo: no CLIP model installed (see the README's CLIP section): indexing faces only (--no-clip)")
        clip = ["--no-clip"]
    steps = [
        # the local path: index galleries in place; the second run reads no file (gallery skip)
        ["index", "--target", str(library), "--caches", str(caches), *model, *clip],
        ["index", "--target", str(library), "--caches", str(caches), *model, *clip],
        # the queue path (what the Windows embed worker runs): queue the files, embed them
        ["queue", "add", "--queue", str(queue), str(library)],
        ["embed", "--queue", str(queue), "--cache", str(embed_cache), *model],
        ["cache", "info", str(caches / "faces.npz")],
    ]
    for step in steps:
        print(f"\n$ facesets {' '.join(step)}", flush=True)
        code = main(step)
        if code:
            return code
    print(f"\ndemo: index state {caches / 'index.sqlite'}\ndemo: face cache {caches / 'faces.npz'}")
    print(f"demo: queue {queue}\ndemo: face cache from the queue {embed_cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main_demo())
