"""Benchmark the review page (``facesets serve``) on a store of library size.

    python scripts/bench_serve.py [--faces 200000] [--persons 4000] [--shared ../shared]

Builds a store of synthetic faces (the vectors of ``scripts/bench_db.py``) loaded with ``facesets load`` into a
fresh embedded PostgreSQL, in ``--persons`` persons (one of them with 10,000 faces), with the photos of a real
labeled folder behind the faces whose crops are shown. Serves the review app on a real port (uvicorn, as
``facesets serve`` does) and measures, over repeated loads through HTTP:

- the people page and a 10,000-face person's page: time to first byte and full load (p50, p95);
- the face crops of one page of that person: cut from the photos (cold) and from the crop cache (warm);
- the actions: a merge of two persons and a 100-face "not this person";

against the baseline of the same run: the store's own query for the same list (``persons list``'s
:func:`facesets.store.personops.list_persons`, straight from Python), so the ratio is what the page adds.
Targets: pages p95 under 300 ms, actions under 500 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_db import synthetic_faces, write_faces  # noqa: E402

from facesets.review.app import ReviewConfig, make_app  # noqa: E402
from facesets.store import personops  # noqa: E402
from facesets.store.database import DatabaseConfig, connect, database_url  # noqa: E402
from facesets.store.load import LoadConfig, run_load  # noqa: E402
from facesets.store.migrations import migrate  # noqa: E402
from tests.browser import served  # noqa: E402

BIG = 10_000  # faces of the largest person
LOADS = 20


def build_store(url: str, caches: Path, faces: int, persons: int) -> None:
    vectors, _ = synthetic_faces(faces)
    caches.mkdir(parents=True)
    write_faces(caches, vectors)
    with connect(url) as conn:
        migrate(conn)
    run_load(LoadConfig(DatabaseConfig(url), caches, batch=10_000))
    with connect(url) as conn, conn.transaction():
        conn.execute("INSERT INTO persons(id) SELECT generate_series(1, %s)", (persons,))
        # person 1 holds the first BIG faces; the rest are dealt round the others
        conn.execute(
            "INSERT INTO face_persons(face_id, person_id, assigned_by) SELECT id, CASE WHEN rn <= %s THEN 1 "
            "ELSE 2 + (rn %% %s) END, 'cluster' FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn "
            "FROM face_detections) f",
            (BIG, persons - 1),
        )
        conn.execute("SELECT setval('persons_id_seq', %s)", (persons,))


def real_photos(url: str, photos: list[Path], folder: Path, person: int) -> None:
    """The photos behind one page of ``person`` and behind every cover: links to real labeled photos."""
    folder.mkdir(parents=True, exist_ok=True)
    with connect(url) as conn, conn.transaction():
        rows = conn.execute(
            "SELECT DISTINCT f.image_id FROM face_detections f JOIN face_persons a ON a.face_id = f.id "
            "WHERE a.face_id IN (SELECT face_id FROM face_persons WHERE person_id = %s ORDER BY face_id LIMIT 120) "
            "OR a.face_id IN (SELECT min(face_id) FROM face_persons GROUP BY person_id)",
            (person,),
        ).fetchall()
        for number, (image,) in enumerate(rows):
            link = folder / f"{number:06d}.jpg"
            link.symlink_to(photos[number % len(photos)])
            conn.execute("UPDATE image_paths SET path = %s WHERE image_id = %s", (str(link), image))


def timed_loads(client: httpx.Client, path: str) -> tuple[list[float], list[float], int]:
    """Time to first byte and full load, in ms, of ``LOADS`` loads (after one warm-up); the page's size."""
    client.get(path)
    first, full, size = [], [], 0
    for _ in range(LOADS):
        started = time.perf_counter()
        with client.stream("GET", path) as response:
            chunks = response.iter_bytes()
            body = next(chunks, b"")
            first.append(1000 * (time.perf_counter() - started))
            size = len(body) + sum(len(chunk) for chunk in chunks)
            assert response.status_code == 200, (path, response.status_code)
        full.append(1000 * (time.perf_counter() - started))
    return first, full, size


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=200_000)
    parser.add_argument("--persons", type=int, default=4_000)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = parser.parse_args()
    photos = sorted(path.resolve() for path in (args.shared / "data" / "faces").rglob("*.jpg"))
    if not photos:
        print(f"error: no photos under {args.shared}/data/faces", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="facesets-bench-serve-"))
    work.chmod(0o755)  # as root, the embedded PostgreSQL runs as a system user that must reach its folder
    try:
        with database_url(DatabaseConfig(None, work / "pg")) as url:
            started = time.perf_counter()
            build_store(url, work / "caches", args.faces, args.persons)
            real_photos(url, photos, work / "photos", 1)
            print(f"store: {args.faces:,} faces in {args.persons:,} persons ({BIG:,} in person 1), "
                  f"built in {time.perf_counter() - started:.0f} s")  # fmt: skip
            run(url, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run(url: str, work: Path) -> None:
    with connect(url) as conn:
        baseline = []
        for _ in range(LOADS):
            started = time.perf_counter()
            personops.list_persons(conn)
            baseline.append(1000 * (time.perf_counter() - started))
    with served(make_app(ReviewConfig(url, work / "crops"))) as base, httpx.Client(base_url=base, timeout=60) as client:
        for name, path in (("people page", "/"), (f"person page ({BIG:,} faces)", "/person/1"),
                           ("person page, least certain first", "/person/1?order=uncertain")):  # fmt: skip
            first, full, size = timed_loads(client, path)
            print(f"{name:34s} first byte p50 {p(first, 50):6.0f} ms p95 {p(first, 95):6.0f} ms | full p50 "
                  f"{p(full, 50):6.0f} ms p95 {p(full, 95):6.0f} ms ({size / 1024:,.0f} KiB) = "
                  f"{p(full, 95) / p(baseline, 95):.1f}x the list query (p95 {p(baseline, 95):.0f} ms)")  # fmt: skip
        page = client.get("/person/1").text
        crops = [part.split(".jpg")[0] for part in page.split('src="/crop/')[1:]]
        for label in ("cold (cut from the photos)", "warm (the crop cache)"):
            started = time.perf_counter()
            for face in crops:
                answer = client.get(f"/crop/{face}.jpg")
                assert answer.status_code == 200, (face, answer.status_code, answer.text)
            elapsed = time.perf_counter() - started
            each = 1000 * elapsed / len(crops)
            print(f"crops of one page, {label:28s} {len(crops)} in {elapsed:5.2f} s = {each:5.1f} ms each")
        token = page.split('"X-CSRF-Token": "')[1].split('"')[0]
        headers = {"X-CSRF-Token": token}
        faces = [int(face) for face in crops[:100]]
        started = time.perf_counter()
        answer = client.post(
            "/person/1/faces", data={"face": [str(f) for f in faces], "action": "not"}, headers=headers
        )
        not_ms = 1000 * (time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        started = time.perf_counter()
        answer = client.post("/person/2/merge", data={"other": "3"}, headers=headers)
        merge_ms = 1000 * (time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
        print(f"actions: 100-face 'not this person' {not_ms:.0f} ms, merge of two persons {merge_ms:.0f} ms "
              "(target 500 ms each)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
