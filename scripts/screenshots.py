"""Screenshots of the review page for the README, taken from a real store (the demo's), so they never drift.

    python scripts/demo.py && python scripts/screenshots.py --data demo/pg --out docs/screenshots

Serves the review app on a free loopback port (as ``facesets serve`` does) and photographs, in Debian's Chromium
through Playwright: the people grid, the largest person's page, the unassigned faces and one photo with its
faces boxed (JPEG, 1100 px wide).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facesets.review.app import ReviewConfig, make_app  # noqa: E402
from facesets.store.database import DatabaseConfig, connect, database_url  # noqa: E402
from facesets.store.migrations import check_schema  # noqa: E402
from tests.browser import ARGS, CHROMIUM, served  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "demo" / "pg", help="the embedded store's folder")
    parser.add_argument("--database", default=None, help="or a PostgreSQL URL")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with database_url(DatabaseConfig(args.database, args.data, must_exist=True)) as url:
        with connect(url) as conn:
            check_schema(conn)
            person = conn.execute(
                "SELECT person_id FROM face_persons GROUP BY person_id ORDER BY count(*) DESC, person_id LIMIT 1"
            ).fetchone()
            photo = conn.execute(
                "SELECT image_id FROM face_detections GROUP BY image_id ORDER BY count(*) DESC, image_id LIMIT 1"
            ).fetchone()
        if person is None or photo is None:
            print(
                "error: the store has no persons: run the demo (or facesets cluster --database) first", file=sys.stderr
            )
            return 1
        with tempfile.TemporaryDirectory() as crops, served(make_app(ReviewConfig(url, Path(crops)))) as base:
            pages = {"people": "/", "person": f"/person/{person[0]}", "unassigned": "/unassigned",
                     "photo": f"/photo/{photo[0]}"}  # fmt: skip
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                for name, path in pages.items():
                    page.goto(base + path)
                    page.wait_for_load_state("networkidle")
                    target = args.out / f"{name}.jpg"
                    page.screenshot(path=str(target), type="jpeg", quality=80)
                    print(f"{target} ({target.stat().st_size / 1024:.0f} KiB)")
                browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
