"""``facesets serve``: the review page's HTTP API in process, against the real embedded PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from facesets.review.app import ReviewConfig, make_app
from facesets.store.persons import PersonClusterConfig, run_person_cluster
from tests.test_export import PEOPLE
from tests.test_persons import face_ids_of, library, loaded, people_of, person_of

__all__ = ["library"]  # the fixture, shared with the persons tests


@pytest.fixture
def store(database: str, library: Path, tmp_path: Path) -> str:
    """The persons tests' library loaded and clustered: three persons, two faces unassigned."""
    run_person_cluster(PersonClusterConfig(loaded(database, library, tmp_path)))
    return database


def client_for(url: str, crops: Path, token: str | None = None) -> TestClient:
    return TestClient(make_app(ReviewConfig(url, crops, token)), base_url="http://127.0.0.1:8000")


def csrf_of(client: TestClient) -> str:
    page = client.get("/").text
    start = page.index('"X-CSRF-Token": "') + len('"X-CSRF-Token": "')
    return page[start : page.index('"', start)]


def person_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [int(row[0]) for row in conn.execute("SELECT id FROM persons ORDER BY id")]


def unassigned_ids(conn: psycopg.Connection[Any]) -> list[int]:
    """The faces no person holds, by id."""
    query = "SELECT id FROM face_detections f WHERE NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.face_id = f.id)"
    return [int(row[0]) for row in conn.execute(query + " ORDER BY id")]


def test_the_pages_show_the_persons_their_faces_the_queue_and_a_photo(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    people = client.get("/")
    assert people.status_code == 200 and people.headers["content-security-policy"].startswith("default-src 'self'")
    persons = person_ids(store)
    assert len(persons) == 3 and all(f'href="/person/{p}"' in people.text for p in persons)
    assert "2 unassigned faces" in people.text
    first = persons[0]
    page = client.get(f"/person/{first}")
    assert page.status_code == 200
    faces = [face for who in PEOPLE for face in face_ids_of(store, who) if person_of(store, face) == first]
    assert faces and all(f'value="{face}"' in page.text for face in faces)
    crop = client.get(f"/crop/{faces[0]}.jpg")
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg" and crop.content[:2] == b"\xff\xd8"
    assert (tmp_path / "crops" / f"{faces[0]}.jpg").read_bytes() == crop.content  # cached for the next time
    queue = client.get("/unassigned")
    assert queue.status_code == 200 and queue.text.count('class="card"') == 2
    with psycopg.connect(store) as conn:
        row = conn.execute("SELECT image_id FROM face_detections WHERE id = %s", (faces[0],)).fetchone()
    assert row is not None
    image = row[0]
    photo = client.get(f"/photo/{image}")
    assert photo.status_code == 200 and f'href="/person/{first}"' in photo.text
    assert client.get(f"/image/{image}.jpg").content[:2] == b"\xff\xd8"


def test_rename_a_taken_name_offers_the_merge_and_merge_keeps_the_named_person(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    headers = {"X-CSRF-Token": csrf_of(client)}
    first, second, _ = person_ids(store)
    answer = client.post(f"/person/{first}/name", data={"name": "  Ben   Affleck "}, headers=headers)
    assert answer.status_code == 200 and 'value="Ben Affleck"' in answer.text
    taken = client.post(f"/person/{second}/name", data={"name": "ben affleck"}, headers=headers)
    assert "already names person" in taken.text and f"merge into {first}" in taken.text
    faces = len(people_of(store)[first]) + len(people_of(store)[second])
    merged = client.post(f"/person/{second}/merge", data={"other": str(first)}, headers=headers)
    assert merged.headers["hx-redirect"] == f"/person/{first}"  # the named one is kept
    assert person_ids(store) == sorted({first} | set(person_ids(store))) and second not in person_ids(store)
    assert len(people_of(store)[first]) == faces


def test_not_this_person_stays_out_after_clustering_again(store: str, library: Path, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    headers = {"X-CSRF-Token": csrf_of(client)}
    person = person_ids(store)[0]
    faces = [face for face in range(1, 100) if person_of(store, face) == person][:2]
    answer = client.post(
        f"/person/{person}/faces", data={"face": [str(f) for f in faces], "action": "not"}, headers=headers
    )
    assert answer.status_code == 200 and answer.headers["hx-refresh"] == "true"
    assert [person_of(store, face) for face in faces] == [None, None]
    run_person_cluster(PersonClusterConfig(loaded(store, library, tmp_path)))
    assert all(person_of(store, face) != person for face in faces)
    with psycopg.connect(store) as conn:
        recorded = conn.execute("SELECT face_id FROM face_not_person WHERE person_id = %s ORDER BY face_id", (person,))
        assert [int(row[0]) for row in recorded] == faces


def test_move_to_a_new_person_and_the_one_photo_rule(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    headers = {"X-CSRF-Token": csrf_of(client)}
    person = person_ids(store)[0]
    face = next(face for face in range(1, 100) if person_of(store, face) == person)
    moved = client.post(f"/person/{person}/faces", data={"face": [str(face)], "action": "new"}, headers=headers)
    assert moved.status_code == 200
    new = person_of(store, face)
    assert new is not None and new not in (person, None) and new in person_ids(store)
    with psycopg.connect(store) as conn:
        pair = conn.execute(
            "SELECT a.id, b.id FROM face_detections a JOIN face_detections b ON a.image_id = b.image_id AND a.id < b.id"
        ).fetchone()
    assert pair is not None, "the library has a photo with two faces"
    refused = client.post(
        f"/person/{person}/faces", data={"face": [str(pair[0]), str(pair[1])], "action": "new"}, headers=headers
    )
    assert refused.status_code == 409 and "a photo shows a person once" in refused.text


def test_the_unassigned_queue_accepts_and_rejects_the_candidate(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    headers = {"X-CSRF-Token": csrf_of(client)}
    with psycopg.connect(store) as conn:
        waiting = unassigned_ids(conn)
    assert len(waiting) == 2
    holds = (
        "EXISTS (SELECT 1 FROM face_persons a JOIN face_detections f ON f.id = a.face_id "
        "JOIN face_detections w ON w.image_id = f.image_id WHERE a.person_id = p.id AND w.id = %s)"
    )
    with psycopg.connect(store) as conn:  # persons with no face of the second face's photo, and with one
        free, clash = (
            [
                int(row[0])
                for row in conn.execute(f"SELECT p.id FROM persons p WHERE {test} ORDER BY p.id", (waiting[1],))
            ]
            for test in (f"NOT {holds}", holds)
        )
    rejected = client.post(f"/face/{waiting[0]}/reject", data={"person": str(free[0])}, headers=headers)
    assert rejected.status_code == 200 and rejected.text == ""  # the card goes, the page keeps its place
    if clash:  # the other person of a photo of two: refused, with the reason
        refused = client.post(f"/face/{waiting[1]}/accept", data={"person": str(clash[0])}, headers=headers)
        assert refused.status_code == 409 and "a photo shows a person once" in refused.text
    accepted = client.post(f"/face/{waiting[1]}/accept", data={"person": str(free[0])}, headers=headers)
    assert accepted.status_code == 200 and person_of(store, waiting[1]) == free[0]
    assert client.get("/unassigned").text.count('class="card"') == 1


def test_hide_and_cover(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    headers = {"X-CSRF-Token": csrf_of(client)}
    person = person_ids(store)[0]
    client.post(f"/person/{person}/hide", data={"hidden": "1"}, headers=headers)
    assert f'href="/person/{person}"' not in client.get("/").text
    assert f'href="/person/{person}"' in client.get("/?show=hidden").text
    client.post(f"/person/{person}/hide", data={"hidden": "0"}, headers=headers)
    last = max(face for face in range(1, 100) if person_of(store, face) == person)
    assert client.post(f"/person/{person}/cover", data={"face": str(last)}, headers=headers).status_code == 200
    assert f"/crop/{last}.jpg" in client.get("/").text
    other = next(face for face in range(1, 100) if person_of(store, face) not in (person, None))
    refused = client.post(f"/person/{person}/cover", data={"face": str(other)}, headers=headers)
    assert refused.status_code == 409


def test_requests_that_must_be_refused(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    person = person_ids(store)[0]
    assert client.post(f"/person/{person}/name", data={"name": "x"}).status_code == 403  # no CSRF token
    assert (
        client.post(f"/person/{person}/name", data={"name": "x"}, headers={"X-CSRF-Token": "guess"}).status_code == 403
    )
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 421  # DNS rebinding
    for hostile in ("/image/..%2F..%2F..%2Fetc%2Fpasswd.jpg", "/photo/..%2F..%2Fetc%2Fpasswd", "/crop/99999.jpg",
                    "/image/%2Fetc%2Fpasswd.jpg", "/static/..%2F..%2Fapp.py", "/person/99999"):  # fmt: skip
        answer = client.get(hostile)
        assert answer.status_code == 404, hostile
        assert b"root:" not in answer.content and b"import" not in answer.content
    escaped = client.post(
        f"/person/{person}/name", data={"name": "<script>alert(1)</script>"}, headers={"X-CSRF-Token": csrf_of(client)}
    )
    assert "<script>alert" not in escaped.text and "&lt;script&gt;" in escaped.text


def test_a_token_is_needed_when_one_is_set(store: str, tmp_path: Path) -> None:
    token = "t0ken-for-the-review-page"
    client = client_for(store, tmp_path / "crops", token)
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    first = client.get(f"/?token={token}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"  # the token leaves the URL
    assert client.get("/").status_code == 200  # then it is the cookie
    assert client_for(store, tmp_path / "crops", token).get("/", headers={"Host": "nas.lan:8000"}).status_code == 401


def _snapshot(url: str) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        return tuple(
            conn.execute(query).fetchall()
            for query in (
                "SELECT id, hidden, merged, cover_face FROM persons ORDER BY id",
                "SELECT person_id, name FROM person_names ORDER BY person_id",
                "SELECT face_id, person_id, assigned_by FROM face_persons ORDER BY face_id",
                "SELECT face_id, person_id FROM face_not_person ORDER BY face_id, person_id",
            )
        )


def test_undo_puts_back_each_change_in_turn_and_the_activity_lists_them(store: str, tmp_path: Path) -> None:
    client = client_for(store, tmp_path / "crops")
    headers = {"X-CSRF-Token": csrf_of(client)}
    first, second, third = person_ids(store)
    states = [_snapshot(store)]
    client.post(f"/person/{first}/name", data={"name": "Ann"}, headers=headers)
    states.append(_snapshot(store))
    faces = [face for face in range(1, 100) if person_of(store, face) == first][:2]
    client.post(f"/person/{first}/faces", data={"face": [str(f) for f in faces], "action": "new"}, headers=headers)
    states.append(_snapshot(store))
    client.post(f"/person/{second}/merge", data={"other": str(first)}, headers=headers)  # second goes into Ann
    states.append(_snapshot(store))
    client.post(f"/person/{third}/hide", data={"hidden": "1"}, headers=headers)
    assert second not in person_ids(store)
    listed = client.get("/activity").text
    for summary in ("named person", "moved 2 faces", f"merged person {second} into person {first}", "hid person"):
        assert summary in listed
    for state in reversed(states):  # each undo puts back the state before the latest change left
        answer = client.post("/undo", headers=headers)
        assert answer.status_code == 200 and answer.text.startswith("undone: ")
        assert _snapshot(store) == state
    assert client.post("/undo", headers=headers).status_code == 409  # nothing left to undo
    assert "(undone)" in client.get("/activity").text


def test_search_shows_the_photos_that_match_best_first(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facesets.models.clip import CLIP_ROOT_ENV
    from tests import clipmodel
    from tests.test_search import QUERY, near, plant

    clip = clipmodel.build_text(clipmodel.build(tmp_path / "models" / "ViT-tiny"))
    monkeypatch.setenv(CLIP_ROOT_ENV, str(clip.parent))  # found by the name the store records, as in search
    query = clipmodel.reference_text_vector(QUERY)
    plant(database, clip, {"best": near(query, 0.9, 1), "second": near(query, 0.8, 2), "third": near(query, 0.7, 3)})
    page = client_for(database, tmp_path / "crops").get("/search", params={"q": QUERY}).text
    found = [part.split('"')[0] for part in page.split('<li data-image="')[1:]]
    assert found[:3] == ["best", "second", "third"] and len(found) == 60
    assert 'href="/photo/best"' in page and "0.900" in page


def test_search_without_clip_vectors_says_how_to_get_them(store: str, tmp_path: Path) -> None:
    page = client_for(store, tmp_path / "crops").get("/search", params={"q": "a beach"})
    assert page.status_code == 200 and "holds no CLIP vectors" in page.text and "facesets load" in page.text
    assert '<li data-image="' not in page.text


def test_serve_without_its_packages_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from facesets.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as where the review extra is not installed
    assert main(["serve", "--data", str(tmp_path / "pg")]) == 1
    assert "pip install -e '.[review]'" in capsys.readouterr().err


def test_faces_too_poor_to_tell_are_shown_apart_and_dismissed_at_once(store: str, tmp_path: Path) -> None:
    from facesets.store.database import with_vectors
    from facesets.store.persons import read_faces

    with psycopg.connect(store) as conn:
        waiting = unassigned_ids(conn)
        known = conn.execute("SELECT count(*) FROM face_detections").fetchone()
        assert known is not None and known[0] >= 19
        # the library's quality: every face about 20, the two faces no person took 5 (blurred, tiny)
        conn.execute("UPDATE face_detections SET norm = 20 + (id % 7) * 0.3")
        conn.execute("UPDATE face_detections SET norm = 5 WHERE id = ANY(%s)", (waiting,))
        conn.execute(  # and a few more faces of good quality, so that the library is large enough to judge
            "INSERT INTO face_detections(image_id, box, keypoints, score, face_short, model, embedding, norm) "
            "SELECT image_id, ARRAY[box[1] + 1000 * k, box[2], box[3] + 1000 * k, box[4]]::real[], keypoints, score, "
            "face_short, model, embedding, 20 FROM face_detections, generate_series(1, 2) k "
            "WHERE id IN (SELECT id FROM face_detections ORDER BY id LIMIT 3)"
        )
    client = client_for(store, tmp_path / "crops")
    page = client.get("/unassigned").text
    section = page[page.index("Too blurred or small to tell") :]
    assert sorted(int(part.split('"')[0]) for part in section.split('data-face="')[1:]) == waiting
    headers = {"X-CSRF-Token": csrf_of(client)}
    dismissed = client.post("/dismiss", data={"face": [str(face) for face in waiting]}, headers=headers)
    assert dismissed.status_code == 200
    assert "Too blurred or small to tell" not in client.get("/unassigned").text
    with psycopg.connect(store) as conn:
        faces = read_faces(with_vectors(conn))
    assert not set(waiting) & set(faces.ids.tolist())  # clustering no longer sees them
    client.post("/undo", headers=headers)
    assert "Too blurred or small to tell" in client.get("/unassigned").text


def test_look_alike_unassigned_faces_come_as_groups_that_become_a_person(store: str, tmp_path: Path) -> None:
    from facesets.store.personops import reset_persons

    with psycopg.connect(store, autocommit=True) as conn:
        reset_persons(conn, None, names=True)  # every face unassigned again: clusters too small to be persons
    client = client_for(store, tmp_path / "crops")
    page = client.get("/unassigned").text
    sections = page.split('<section class="group"')[1:]
    assert len(sections) >= 2  # the library's people, each a group
    group = sorted(int(part.split('"')[0]) for part in sections[0].split('data-face="')[1:])
    assert len(group) >= 2 and all(person_of(store, face) is None for face in group)
    headers = {"X-CSRF-Token": csrf_of(client)}
    made = client.post("/group", data={"face": [str(face) for face in group]}, headers=headers)
    assert made.status_code == 200
    persons = {person_of(store, face) for face in group}
    assert len(persons) == 1 and None not in persons  # one new person of exactly those faces
    (person,) = persons
    assert sorted(face for face in range(1, 100) if person_of(store, face) == person) == group
    client.post("/undo", headers=headers)
    assert all(person_of(store, face) is None for face in group) and person not in person_ids(store)
