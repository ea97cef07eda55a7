"""The review page in a real browser: Playwright driving Debian's Chromium against ``facesets serve``'s app on a
real port, on the real embedded PostgreSQL."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from facesets.review.app import ReviewConfig, make_app
from tests.browser import ARGS, CHROMIUM, served
from tests.test_persons import library, person_of
from tests.test_serve import person_ids, store

__all__ = ["library", "store"]  # fixtures shared with the HTTP tests


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def serve(store: str, tmp_path: Path) -> Iterator[Any]:
    """Start the review app on a free loopback port; yields ``start(token=None) -> base URL``."""
    with contextlib.ExitStack() as servers:

        def start(token: str | None = None) -> str:
            app = make_app(ReviewConfig(store, tmp_path / "crops", token, loopback_only=token is None))
            return servers.enter_context(served(app))

        yield start


def _until(page: Any, expression: str, value: object, seconds: float = 10.0) -> None:
    """Wait until ``expression`` evaluates to ``value`` in the page (the page's CSP forbids Playwright's
    string predicates, which it evaluates with eval)."""
    from playwright.sync_api import Error

    deadline = time.monotonic() + seconds
    while True:
        try:
            seen = page.evaluate(expression)
        except Error as exc:  # the page is being reloaded (an action's HX-Refresh): ask the new one
            seen = f"(no answer: {exc.message.splitlines()[0]})"
        if seen == value:
            return
        assert time.monotonic() < deadline, f"{expression} is {seen!r}, not {value!r}"
        time.sleep(0.05)


def _on_person_page(browser: Any, serve: Any, store: str) -> tuple[str, Any, int]:
    """A new page on a new server, showing the first person's faces: the base URL, the page, the person."""
    base = serve()
    page = browser.new_page()
    person = person_ids(store)[0]
    page.goto(f"{base}/person/{person}")
    return base, page, person


def _not_person(store: str, person: int) -> list[int]:
    with psycopg.connect(store) as conn:
        rows = conn.execute("SELECT face_id FROM face_not_person WHERE person_id = %s ORDER BY face_id", (person,))
        return [int(row[0]) for row in rows]


def _name(store: str, person: int) -> str | None:
    with psycopg.connect(store) as conn:
        row = conn.execute("SELECT name FROM person_names WHERE person_id = %s", (person,)).fetchone()
    return None if row is None else str(row[0])


def test_rename_inline_then_a_taken_name_offers_the_merge(browser: Any, serve: Any, store: str) -> None:
    base = serve()
    page = browser.new_page()
    page.goto(base + "/")
    first, second, _ = person_ids(store)
    box = page.locator(f"li[data-person='{first}'] form.name input")
    box.fill("Mindy Kaling")
    box.press("Enter")
    page.locator(f"li[data-person='{first}'] form.name input[value='Mindy Kaling']").wait_for()
    assert _name(store, first) == "Mindy Kaling"
    other = page.locator(f"li[data-person='{second}'] form.name input")
    other.fill("mindy kaling")
    other.press("Enter")
    offer = page.get_by_role("button", name=f"Same person: merge into {first}")
    offer.wait_for()
    offer.click()
    page.wait_for_url(f"{base}/person/{first}")
    assert second not in person_ids(store) and _name(store, first) == "Mindy Kaling"


def test_choose_faces_then_not_this_person_and_hide(browser: Any, serve: Any, store: str) -> None:
    base, page, person = _on_person_page(browser, serve, store)
    boxes = page.locator("#faces input[name=face]")
    before = boxes.count()
    chosen = [int(boxes.nth(i).get_attribute("value")) for i in (0, 1)]
    boxes.nth(0).check()
    boxes.nth(1).check()
    assert page.locator("#chosen").inner_text() == "2 chosen"
    page.get_by_role("button", name="Not this person").click()
    _until(page, "document.querySelectorAll('#faces input[name=face]').length", before - 2)
    assert _not_person(store, person) == sorted(chosen)
    assert [person_of(store, face) for face in chosen] == [None, None]
    page.get_by_role("button", name="Hide").click()
    page.get_by_role("button", name="Unhide").wait_for()
    page.goto(base + "/")
    assert page.locator(f"li[data-person='{person}']").count() == 0


def test_the_unassigned_queue_with_the_keyboard(browser: Any, serve: Any, store: str) -> None:
    base = serve()
    page = browser.new_page()
    page.goto(base + "/unassigned")
    cards = page.locator("li.card")
    assert cards.count() == 2
    first, second = (int(cards.nth(i).get_attribute("data-face")) for i in (0, 1))
    assert page.evaluate("document.activeElement.dataset.face") == str(first)
    page.keyboard.press("s")  # skip: the next card
    assert page.evaluate("document.activeElement.dataset.face") == str(second)
    page.keyboard.press("p")
    candidate = int(cards.nth(0).locator("button.reject").get_attribute("hx-vals").split('"')[3])
    page.keyboard.press("r")  # not this candidate: the card goes, the next one takes the focus
    _until(page, "document.querySelectorAll('li.card').length", 1)
    _until(page, "document.activeElement.dataset.face", str(second))
    assert first in _not_person(store, candidate)


def test_the_photo_view_boxes_every_face(browser: Any, serve: Any, store: str) -> None:
    base = serve()
    page = browser.new_page()
    person = person_ids(store)[0]
    page.goto(f"{base}/person/{person}")
    page.locator("a[href^='/photo/']").first.click()
    page.wait_for_url(f"{base}/photo/*")
    box = page.locator("figure.photo a.box").first
    _until(page, "document.querySelector('figure.photo a.box').style.left !== ''", True)
    assert box.get_attribute("href") == f"/person/{person}"
    image = page.locator("#photo").bounding_box()
    placed = box.bounding_box()
    assert image and placed and image["x"] <= placed["x"] <= image["x"] + image["width"]


def test_two_sessions_editing_one_person_lose_nothing(browser: Any, serve: Any, store: str) -> None:
    base = serve()
    person = person_ids(store)[0]
    one, two = browser.new_context().new_page(), browser.new_context().new_page()
    for page in (one, two):
        page.goto(f"{base}/person/{person}")
    first = int(one.locator("#faces input[name=face]").nth(0).get_attribute("value"))
    last = int(two.locator("#faces input[name=face]").last.get_attribute("value"))
    one.locator(f"#faces input[value='{first}']").check()
    two.locator(f"#faces input[value='{last}']").check()
    one.get_by_role("button", name="Not this person").click()
    two.get_by_role("button", name="Not this person").click()  # on a page that still shows the first face
    for page in (one, two):
        page.wait_for_load_state("networkidle")
    assert _not_person(store, person) == sorted({first, last})


def test_a_token_server_refuses_a_browser_without_it(browser: Any, serve: Any) -> None:
    token = "a-token-of-twenty-four-chars"
    base = serve(token)
    page = browser.new_page()
    refused = page.goto(base + "/")
    assert refused is not None and refused.status == 401
    page.goto(f"{base}/?token={token}")
    assert page.url == base + "/" and page.locator("h1").first.inner_text().startswith("People")


def test_undo_from_the_page(browser: Any, serve: Any, store: str) -> None:
    base, page, person = _on_person_page(browser, serve, store)
    boxes = page.locator("#faces input[name=face]")
    before = boxes.count()
    face = int(boxes.nth(0).get_attribute("value"))
    boxes.nth(0).check()
    page.get_by_role("button", name="Not this person").click()
    _until(page, "document.querySelectorAll('#faces input[name=face]').length", before - 1)
    page.get_by_role("button", name="Undo", exact=True).click()
    _until(page, "document.querySelectorAll('#faces input[name=face]').length", before)
    assert person_of(store, face) == person and _not_person(store, person) == []
    page.goto(base + "/activity")
    assert f"1 face: not person {person} (undone)" in page.locator("ol.activity").inner_text()


def test_merge_from_a_suggestion_and_hostile_image_urls(browser: Any, serve: Any, store: str) -> None:
    base, page, person = _on_person_page(browser, serve, store)
    page.on("dialog", lambda dialog: dialog.accept())  # the merge asks first
    suggestion = page.locator("section.suggestions li").first
    other = int(suggestion.get_attribute("data-person"))
    faces = len([face for face in range(1, 100) if person_of(store, face) in (person, other)])
    suggestion.get_by_role("button", name="Merge").click()
    deadline = time.monotonic() + 10
    while other in person_ids(store):  # neither is named: the page's person is kept, the suggested one goes
        assert time.monotonic() < deadline, "the merge did not happen"
        time.sleep(0.05)
    page.wait_for_load_state("networkidle")
    assert page.url == f"{base}/person/{person}"
    assert len([face for face in range(1, 100) if person_of(store, face) == person]) == faces
    for hostile in ("/image/..%2F..%2F..%2Fetc%2Fpasswd.jpg", "/crop/..%2F..%2Fetc%2Fpasswd.jpg", "/photo/..%2Fetc"):
        answer = page.goto(base + hostile)
        assert answer is not None and answer.status == 404 and "root:" not in page.content()


def test_not_this_person_in_the_browser_holds_after_clustering_again(
    browser: Any, serve: Any, store: str, library: Path, tmp_path: Path
) -> None:
    from facesets.store.persons import PersonClusterConfig, run_person_cluster
    from tests.test_persons import loaded

    _, page, person = _on_person_page(browser, serve, store)
    face = int(page.locator("#faces input[name=face]").nth(0).get_attribute("value"))
    page.locator(f"#faces input[value='{face}']").check()
    page.get_by_role("button", name="Not this person").click()
    _until(page, f"document.querySelectorAll(\"#faces input[value='{face}']\").length", 0)
    run_person_cluster(PersonClusterConfig(loaded(store, library, tmp_path)))
    assert person_of(store, face) != person
    page.reload()
    assert page.locator(f"#faces input[value='{face}']").count() == 0
