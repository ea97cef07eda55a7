"""`make demo`: the main job end to end on sample photos (`make demo-immich`: the Immich path, with --immich).

A small gallery library is indexed (and embedded again through a queue, as the Windows worker does), its faces
are clustered into face sets and exported with a visual report, everything is loaded into the embedded
PostgreSQL, the faces are clustered into persons there, the persons are listed, and (with a CLIP model
installed) a text search runs.

Uses ../shared/data/faces and the scrfd2.5g-mbf pack from ../shared/models when present; otherwise the
photo that ships with insightface (when installed) and the buffalo_l pack from ~/.insightface/models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.base.errors import FacesetsError  # noqa: E402
from facesets.cli import main  # noqa: E402
from facesets.models.clip import resolve_clip  # noqa: E402
from facesets.models.faces import build_engine  # noqa: E402
from facesets.models.packs import resolve_pack  # noqa: E402
from facesets.models.runtime import RuntimeOptions  # noqa: E402


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


def pg_folder(out: Path) -> tuple[Path, Path | None]:
    """Where the embedded PostgreSQL keeps its data: under the demo folder, or (as root, where PostgreSQL runs
    as a system user that must traverse every parent) in a world-traversable temporary folder."""
    if os.name != "posix" or os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in out.absolute().parents):
        return out / "pg", None
    scratch = Path(tempfile.mkdtemp(prefix="facesets-demo-pg-"))
    scratch.chmod(0o777)
    return scratch / "pg", scratch


def immich_library(shared: Path, pack: Path) -> list[Any]:
    """Fake Immich assets of the celeb5 photos, with the face boxes Immich would report (preview pixels)."""
    from tests.fakeimmich import FakeAsset, fake_uuid
    from tests.immichlib import face_boxes

    engine = build_engine(resolve_pack(pack, "demo"), RuntimeOptions(("CPUExecutionProvider",), 1))
    assets = []
    for number, photo in enumerate(sorted((shared / "data" / "faces" / "celeb5").glob("*/*.jpg")), start=1):
        data = photo.read_bytes()
        boxes, width, height, _ = face_boxes(engine, data)
        path = f"/library/{photo.parent.name}/{photo.name}"
        assets.append(FakeAsset(fake_uuid(number), path, data, boxes, (width // 2, height // 2), (width, height)))
    return assets


def run_immich(shared: Path, out: Path, pg: Path) -> int:
    """The Immich path: a fake Immich server (the tests' one, checked against Immich's OpenAPI spec) serves the
    labeled photos of celeb5 as peter's library; then stage, finalize (twice: the second run skips every step)
    and list the persons, each as a user would run it."""
    from tests.fakeimmich import FakeImmich, SpecChecker
    from tests.immichlib import KEY, PETER

    pack = shared / "models" / "scrfd2.5g-mbf"
    if not (shared / "data" / "faces" / "celeb5").is_dir() or not pack.is_dir():
        raise SystemExit(f"the Immich demo needs {shared}/data/faces/celeb5 and {pack}")
    checker = SpecChecker(shared / "immich" / "immich-openapi-specs-v3.1.0.json")
    assets = immich_library(shared, pack)
    print(f"demo-immich: a fake Immich library of {len(assets)} photos for user peter")
    env = {**os.environ, "IMMICH_API_KEY_PETER": KEY, "PYTHONPATH": str(REPO)}
    folders = ["--staging", str(out / "staging"), "--caches", str(out / "caches")]
    finalize = ["finalize", "--user", "peter", "--embed", "local", "--model-dir", str(pack), *folders]
    finalize += ["--sets", str(out / "facesets_swap_ready"), "--data", str(pg), "--min-faces", "3"]
    with FakeImmich(assets, [PETER], checker) as server:
        steps = [
            ["immich", "stage", "--user", "peter", "--url", server.url, *folders],
            finalize,
            finalize,
            ["persons", "list", "--data", str(pg)],
        ]
        for step in steps:
            print(f"\n$ facesets {' '.join(step)}", flush=True)
            code = subprocess.run([sys.executable, "-m", "facesets", *step], env=env).returncode
            if code:
                return code
    if server.violations:
        print(f"demo-immich: requests outside Immich's API spec: {server.violations}")
        return 1
    print(f"\ndemo-immich: staged originals {out / 'staging' / 'peter'}\ndemo-immich: cache {out / 'caches'}")
    print(f"demo-immich: face sets {out / 'facesets_swap_ready'} (report.html inside)")
    return 0


def main_demo() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=None, help="default: demo/ (demo-immich/ with --immich)")
    parser.add_argument("--immich", action="store_true", help="the Immich path, against the fake Immich server")
    parser.add_argument("--serve", action="store_true", help="end by serving the review page on the demo's store")
    args = parser.parse_args()
    out: Path = args.out or REPO / ("demo-immich" if args.immich else "demo")
    if out.exists():
        shutil.rmtree(out)
    pg, scratch = pg_folder(out)
    try:
        out.mkdir(parents=True)
        code = (run_immich if args.immich else run_steps)(args.shared, out, pg)
        serve = ["serve", "--data", str(pg), "--crops", str(out / "crops")]
        if code:
            return code
        if not args.serve:  # the store of a scratch folder goes at exit: then only the demo can serve it
            again = f"facesets {' '.join(serve)}" if scratch is None else "python scripts/demo.py --serve"
            print(f"demo: review and name the persons in a browser: {again}")
            return 0
        print(f"\n$ facesets {' '.join(serve)}", flush=True)
        return main(serve)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def run_steps(shared: Path, out: Path, pg: Path) -> int:
    library, caches, sets = out / "library", out / "caches", out / "facesets_swap_ready"
    queue, embed_cache, plan = out / "queue.json", out / "embed" / "faces.npz", out / "clusters.json"
    embed_cache.parent.mkdir(parents=True)
    count = build_library(shared, library)
    print(f"demo: sample library of {count} photos in galleries under {library}")
    pack = shared / "models" / "scrfd2.5g-mbf"
    model = ["--model-dir", str(pack)] if pack.is_dir() else ["--model-pack", "buffalo_l"]
    clip: list[str] = []
    try:
        resolve_clip(None)
    except FacesetsError:
        print("demo: no CLIP model installed (see the README's CLIP section): indexing faces only (--no-clip)")
        clip = ["--no-clip"]
    db = ["--data", str(pg)]
    steps = [
        # the local path: index galleries in place; the second run reads no file (gallery skip)
        ["index", "--target", str(library), "--caches", str(caches), *model, *clip],
        ["index", "--target", str(library), "--caches", str(caches), *model, *clip],
        # the queue path (what the Windows embed worker runs): queue the files, embed them
        ["queue", "add", "--queue", str(queue), str(library)],
        ["embed", "--queue", str(queue), "--cache", str(embed_cache), *model],
        ["cache", "info", str(caches / "faces.npz")],
        # identities: a plan, then the face sets with their report
        ["cluster", "--cache", str(caches / "faces.npz"), "--sets", str(sets), "--plan", str(plan), "--min-faces", "3"],
        ["export", "--plan", str(plan)],
        # the database: load everything, cluster the faces into persons, list them (and search with CLIP)
        ["migrate", *db],
        ["load", "--caches", str(caches), "--sets", str(sets), *db],
        ["cluster", *db],
        ["persons", "list", *db],
    ]
    if not clip:
        steps.append(["search", "a smiling person outdoors", "--limit", "5", *db])
    for step in steps:
        print(f"\n$ facesets {' '.join(step)}", flush=True)
        code = main(step)
        if code:
            return code
    if clip:
        print("\ndemo: text search (facesets search) needs a CLIP model: skipped")
    print(f"\ndemo: index state {caches / 'index.sqlite'}\ndemo: face cache {caches / 'faces.npz'}")
    print(f"demo: queue {queue}\ndemo: face cache from the queue {embed_cache}")
    print(f"demo: face sets {sets}\ndemo: visual report {sets / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main_demo())
