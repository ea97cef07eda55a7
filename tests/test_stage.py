"""The Immich stage against the fake Immich server (validated against Immich's OpenAPI spec)."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from facesets.artifacts.queue import read_queue
from facesets.base.errors import ConfigError
from facesets.cli import main
from facesets.models.faces import FaceEngine
from facesets.models.packs import ModelPack
from facesets.sources.immich.client import Secret
from facesets.sources.immich.config import UserEntry, key_variable, read_users, resolve_key
from facesets.sources.immich.paths import PathClaims, inside, relative_path
from facesets.sources.immich.state import Outcome, StageState
from tests.conftest import REPO, shared_path
from tests.fakeimmich import FakeImmich, SpecChecker
from tests.immichlib import KEY, MIN_FACE, NIC, PETER, Library, build_library, write_old_cache


@pytest.fixture(scope="session")
def checker() -> SpecChecker:
    return SpecChecker(shared_path("immich", "immich-openapi-specs-v3.1.0.json"))


@pytest.fixture(scope="session")
def library(faces_dir: Path, engine: FaceEngine) -> Library:
    return build_library(faces_dir, engine)


@pytest.fixture
def server(library: Library, checker: SpecChecker) -> Iterator[FakeImmich]:
    with FakeImmich(library.assets, [PETER, NIC], checker) as fake:
        yield fake
    assert fake.violations == []


@pytest.fixture
def workdir(tmp_path: Path, library: Library, pack: ModelPack, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "caches").mkdir()
    write_old_cache(tmp_path / "caches" / "old.npz", pack.identity(), library)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMMICH_API_KEY_PETER", KEY)
    for name in ("IMMICH_API_KEY", "IMMICH_API_KEY_FILE", "IMMICH_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def stage(server: FakeImmich, *extra: str, staging: str = "staging") -> int:
    options = ["--staging", staging, "--page-size", "7", "--commit-every", "3", "--retry-delay", "0.01", "--json"]
    return main(["immich", "stage", "--user", "peter", "--url", server.url, *options, *extra])


def summary(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out
    return dict(orjson.loads(out[out.index("{") :]))


def queue_view(path: Path, root: Path) -> list[tuple[str, str, str, int]]:
    return [(str(Path(e.path).relative_to(root)), e.source.asset_id, e.content_hash, e.size) for e in read_queue(path)]


def staged_files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_bytes().hex()[:64] for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_stage_counts_files_queue_and_paths(
    workdir: Path, server: FakeImmich, library: Library, capsys: pytest.CaptureFixture[str]
) -> None:
    scaled = [a for a in library.staged if min(min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in a.faces) < MIN_FACE]
    assert scaled, "some staged face must be below --min-face in preview pixels, to show boxes are scaled"
    assert stage(server) == 0
    stats = summary(capsys)
    for name, value in library.expected.items():
        assert stats[name] == value, name
    assert stats["complete"] is True
    root = workdir / "staging" / "peter"
    files = {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
    assert files == set(library.relative.values())
    for item in library.staged:
        assert (root / library.relative[item.id]).read_bytes() == item.data
    queue = read_queue(workdir / "staging" / "queue-peter.json")
    assert [entry.source.asset_id for entry in queue] == [item.id for item in library.staged]
    assert all(entry.windows_path is None and entry.source.checksum for entry in queue)
    assert not list((workdir / "staging").glob(".partial-*"))

    before = len(server.log)
    assert stage(server) == 0
    again = summary(capsys)
    assert again["already_done"] == 15 and again["staged_count"] == 0 and again["skipped_by_checksum"] == 3
    assert [path for _, path in server.log[before:] if "/faces" in path or "/original" in path] == []


def test_dry_run_downloads_and_writes_nothing(
    workdir: Path, server: FakeImmich, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stage(server, "--dry-run") == 0
    stats = summary(capsys)
    assert stats["would_stage"] == 10 and stats["staged_count"] == 0 and stats["skipped_no_big_face"] == 3
    assert not [path for _, path in server.log if path.endswith("/original")]
    assert not (workdir / "staging").exists()  # writes nothing: no folder, state, queue or lock file
    assert stage(server) == 0
    files = {path: path.read_bytes() for path in (workdir / "staging").rglob("*") if path.is_file()}
    assert stage(server, "--dry-run") == 0
    assert {path: path.read_bytes() for path in (workdir / "staging").rglob("*") if path.is_file()} == files


def test_transient_faults_are_retried_to_the_same_result(
    workdir: Path, server: FakeImmich, library: Library, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stage(server, staging="clean") == 0
    capsys.readouterr()
    server.faults.fail_next, server.faults.reset_next, server.faults.truncate_next = 3, 2, 2
    server.faults.after = len(server.log) + 3
    server.faults.corrupt[library.staged[1].id] = 1  # once: the second download verifies
    server.faults.corrupt[library.staged[3].id] = 9  # every time: left for the next run
    server.faults.latency = 0.005
    assert stage(server, "--workers", "4") == 0
    stats = summary(capsys)
    assert stats["skipped_download_error"] == 1 and stats["staged_count"] == 7
    state = orjson.loads((workdir / "staging" / "state-peter.json").read_bytes())
    assert state["pending"] == {library.staged[3].id: library.relative[library.staged[3].id]}
    server.faults.corrupt.clear()
    assert stage(server) == 0
    assert summary(capsys)["staged_count"] == 1
    root, clean = workdir / "staging", workdir / "clean"
    assert sorted(queue_view(root / "queue-peter.json", root)) == sorted(queue_view(clean / "queue-peter.json", clean))
    assert staged_files(root / "peter") == staged_files(clean / "peter")


def test_outage_exits_2_and_the_same_command_resumes(
    workdir: Path, server: FakeImmich, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stage(server, staging="clean") == 0
    capsys.readouterr()
    served = len(server.log)
    server.faults.down_after = served + 20
    assert stage(server, "--workers", "2") == 2
    err = capsys.readouterr().err
    assert ("requests in a row failed" in err or "kept failing" in err) and "run the same command again" in err
    server.faults.down, server.faults.down_after = False, None
    assert stage(server) == 0
    root, clean = workdir / "staging", workdir / "clean"
    assert queue_view(root / "queue-peter.json", root) == queue_view(clean / "queue-peter.json", clean)
    assert staged_files(root / "peter") == staged_files(clean / "peter")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_points_then_resume(
    seed: int, workdir: Path, server: FakeImmich, library: Library, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stage(server, staging="clean") == 0
    capsys.readouterr()
    server.faults.latency = 0.03
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "facesets", "immich", "stage", "--user", "peter", "--url", server.url]
    command += ["--page-size", "7", "--commit-every", "3", "--workers", "2", "--json"]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at = len(server.log) + random.Random(seed).randint(6, 30)  # a run makes about 36 requests
    while len(server.log) < kill_at and child.poll() is None:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the run ended before the kill: raise the latency"
    root = workdir / "staging"
    state = StageState.open(root / "state-peter.json", "peter")  # snapshot + journal, as the next run reads it
    state.close()
    settled = {key for key, seen in state.seen.items() if seen.outcome is Outcome.STAGED}
    by_path = {path: asset_id for asset_id, path in library.relative.items()}
    files = [str(p.relative_to(root / "peter")) for p in (root / "peter").rglob("*") if p.is_file()]
    on_disk = {by_path[name] for name in files if name in by_path}  # others: duplicates, dropped when settled
    print(f"killed with {len(settled)} settled, {len(on_disk)} on disk, {len(list(root.rglob('*.part')))} partial")
    server.faults.latency = 0.0
    before = len(server.log)
    assert stage(server) == 0
    for asset_id in settled | on_disk:
        assert not [path for _, path in server.log[before:] if asset_id in path], "request for a staged asset"
    clean = workdir / "clean"
    view = queue_view(root / "queue-peter.json", root)
    assert view == queue_view(clean / "queue-peter.json", clean)
    assert len({entry[0] for entry in view}) == len(view) == 8
    assert staged_files(root / "peter") == staged_files(clean / "peter")
    assert not list(root.rglob("*.part")) and not list(root.rglob(".*.tmp"))


def test_key_never_reaches_files_or_logs(
    workdir: Path, server: FakeImmich, library: Library, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults.fail_next, server.faults.corrupt[library.staged[0].id] = 2, 9
    server.faults.after = len(server.log) + 3
    with caplog.at_level(logging.DEBUG):
        assert stage(server) == 0
        server.faults.revoked.add(KEY)
        assert stage(server) == 1
    for path in workdir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in caplog.text
    assert repr(Secret(KEY)) == "Secret('***')" and KEY not in str(Secret(KEY))


def test_refused_key_wrong_owner_and_wrong_url(
    workdir: Path, server: FakeImmich, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMMICH_API_KEY_PETER", "not-a-key")
    assert stage(server) == 1
    assert "Immich rejected the API key (HTTP 401" in capsys.readouterr().err
    monkeypatch.setenv("IMMICH_API_KEY_PETER", NIC.key)
    (workdir / "users.json").write_text(orjson.dumps({"peter": {"id": PETER.id}}).decode())
    assert stage(server) == 1
    err = capsys.readouterr().err
    assert f"belongs to nic ({NIC.id}), but users.json maps 'peter' to {PETER.id}" in err
    monkeypatch.setenv("IMMICH_API_KEY_PETER", KEY)
    assert main(["immich", "stage", "--user", "peter", "--url", server.url + "/nothing/api", "--retries", "0"]) == 1
    assert "does not point at an Immich server" in capsys.readouterr().err
    assert main(["immich", "stage", "--user", "peter", "--url", "http://127.0.0.1:9", "--retries", "0"]) == 1
    assert "cannot reach Immich at http://127.0.0.1:9/api" in capsys.readouterr().err
    assert main(["immich", "stage", "--user", "bob", "--url", server.url]) == 1
    assert "users.json has no user 'bob' (it has: peter)" in capsys.readouterr().err
    assert not [p for p in (workdir / "staging").rglob("*") if p.is_file() and "lock" not in p.name]


def test_revoked_key_mid_run_saves_state(
    workdir: Path, server: FakeImmich, library: Library, capsys: pytest.CaptureFixture[str]
) -> None:
    server.faults.latency = 0.01
    original = server.next_fault

    def revoke_later(path: str) -> str | None:
        if len(server.log) >= 25:
            server.faults.revoked.add(KEY)
        return original(path)

    server.next_fault = revoke_later  # type: ignore[method-assign]
    assert stage(server, "--workers", "2") == 1
    assert "rejected the API key (HTTP 401" in capsys.readouterr().err
    state = orjson.loads((workdir / "staging" / "state-peter.json").read_bytes())
    assert state["cursor"] is not None and 0 < len(state["seen"]) < 15
    server.faults.revoked.clear()
    server.next_fault = original  # type: ignore[method-assign]
    assert stage(server) == 0
    assert len(read_queue(workdir / "staging" / "queue-peter.json")) == 8


def test_spec_checker_rejects_what_immich_would(server: FakeImmich) -> None:
    answer = httpx.post(server.url + "/api/search/metadata", json={"page": 0, "size": 5000}, headers={"x-api-key": KEY})
    assert answer.status_code == 400
    assert len(server.violations) == 2 and "body" in server.violations[0]
    assert httpx.get(server.url + "/api/faces", params={"id": "nope"}, headers={"x-api-key": KEY}).status_code == 400
    server.violations.clear()


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("/mnt/media/photos/2019/a.jpg", "mnt/media/photos/2019/a.jpg"),
        ("../../etc/passwd", "etc/passwd"),
        ("/a/./b/../../c.jpg", "a/b/c.jpg"),
        ("D:\\Pictures\\..\\x.jpg", "Pictures/x.jpg"),
        ("\\\\server\\share\\y.jpg", "server/share/y.jpg"),
        ("file:///srv/p.jpg", "srv/p.jpg"),
        ("/p/a\x00b\x07c.jpg", "p/a_b_c.jpg"),
        ('/p/what?<is>"this"|*.jpg', "p/what__is__this___.jpg"),
        ("/p/trailing. . ", "p/trailing"),
        ("/p/lpt1.txt.jpg", "p/_lpt1.txt.jpg"),
        ("/" + "/".join(f"d{i}" for i in range(12)) + "/z.jpg", "/".join(f"d{i}" for i in range(4, 12)) + "/z.jpg"),
        ("", "asset-id1"),
        ("../..", "asset-id1"),
        ("/..\\..\\x.HEIC", "x.HEIC"),
    ],
)
def test_relative_path_mapping(original: str, expected: str, tmp_path: Path) -> None:
    path = relative_path(original, "id1")
    assert path == expected
    assert inside(tmp_path, path).resolve().is_relative_to(tmp_path.resolve())


def test_long_names_are_cut_and_case_twins_get_tags(tmp_path: Path) -> None:
    long = relative_path("/p/" + "é" * 200 + ".jpeg", "x")
    assert long.endswith(".jpeg") and len(long.split("/")[-1].encode()) <= 120
    claims = PathClaims()
    assert claims.claim("p/A.jpg", "aaaaaaaa-1") == "p/A.jpg"
    assert claims.claim("p/a.jpg", "bbbbbbbb-2") == "p/a~bbbbbbbb.jpg"
    assert claims.claim("p/A.jpg", "aaaaaaaa-1") == "p/A.jpg"
    assert claims.claim("p/a~BBBBBBBB.jpg", "cccccccc-3") == "p/a~BBBBBBBB~cccccccc.jpg"
    (tmp_path / "out").symlink_to("/")
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path, "out/etc/x.jpg")


def test_key_resolution_order(tmp_path: Path) -> None:
    (tmp_path / "peter.key").write_text("from-users-file\n")
    (tmp_path / "any.key").write_text("from-env-file")
    users_file = tmp_path / "users.json"
    users_file.write_text('{"peter": {"id": "u1", "key_file": "peter.key"}, "nic": {}}')
    users = read_users(users_file)
    assert users["peter"] == UserEntry("u1", tmp_path / "peter.key")
    env = {"IMMICH_API_KEY": "general", "IMMICH_API_KEY_FILE": str(tmp_path / "any.key")}
    assert key_variable("peter.b-2") == "IMMICH_API_KEY_PETER_B_2"
    assert resolve_key("peter", {**env, "IMMICH_API_KEY_PETER": "own"}, users["peter"]).reveal() == "own"
    assert resolve_key("peter", env, users["peter"]).reveal() == "from-users-file"
    assert resolve_key("nic", env, users["nic"]).reveal() == "from-env-file"
    assert resolve_key("nic", {"IMMICH_API_KEY": "general"}, None).reveal() == "general"
    with pytest.raises(ConfigError, match="no Immich API key for 'nic': set IMMICH_API_KEY_NIC"):
        resolve_key("nic", {}, None)
    users_file.write_text('{"peter": "u1"}')
    with pytest.raises(ConfigError, match="must be an object of strings"):
        read_users(users_file)
    users_file.write_text("{oops")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_users(users_file)


def test_state_from_another_format_is_refused(
    workdir: Path, server: FakeImmich, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "staging").mkdir()
    (workdir / "staging" / "state-peter.json").write_text('{"format": "facesets.immich-state", "version": 9}')
    assert stage(server) == 1
    assert "has version 9; this facesets reads 1: upgrade facesets" in capsys.readouterr().err
    (workdir / "staging" / "state-peter.json").write_text("{torn")
    assert stage(server) == 1
    assert "cannot be read" in capsys.readouterr().err
    assert (workdir / "staging" / "state-peter.json").read_text() == "{torn"


def test_asset_ids_that_are_not_uuids_never_touch_a_path(
    workdir: Path, library: Library, checker: SpecChecker, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = workdir / "victim"
    victim.write_text("keep me")
    hostile = [
        dataclasses.replace(library.staged[0], id="../../victim"),
        dataclasses.replace(library.staged[1], id="../escaped"),
        library.staged[2],
    ]
    with FakeImmich(hostile, [PETER, NIC]) as fake:
        assert stage(fake) == 0
    stats = summary(capsys)
    assert stats["skipped_bad_id"] == 2 and stats["staged_count"] == 1
    assert victim.read_text() == "keep me" and not (workdir / "escaped").exists()
    assert not any(path.endswith("victim") or "escaped" in path for _, path in fake.log)


@pytest.mark.parametrize(("endless", "message"), [("repeat", "gave page 2 again"), ("fresh", "more than the library")])
def test_a_listing_without_end_is_stopped(
    workdir: Path, server: FakeImmich, endless: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.faults.endless = endless
    assert stage(server, "--dry-run") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    pages = sum(1 for _, path in server.log if path.endswith("/search/metadata"))
    assert pages <= len(server.assets) // 7 + 4  # the bound: the library's size in pages, plus a little


def test_a_listing_that_keeps_failing_exits_2_with_its_progress_saved(
    workdir: Path, server: FakeImmich, capsys: pytest.CaptureFixture[str]
) -> None:
    server.faults.after, server.faults.fail_next = 4, 1000  # /search/metadata answers 503 from some point on
    assert stage(server, "--retries", "1") == 2
    err = capsys.readouterr().err
    assert "run the same command again" in err and "Traceback" not in err
    server.faults.fail_next = 0
    assert stage(server) == 0


def test_a_damaged_journal_line_is_skipped_with_a_warning_and_a_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from facesets.sources.immich.state import StageState

    path = tmp_path / "state-peter.json"
    good = [
        orjson.dumps({"seen": {f"a{i}": {"outcome": "staged", "path": f"p/{i}.jpg"}}, "cursor": i}) for i in range(3)
    ]
    journal = path.with_name(path.name + ".journal")
    journal.write_bytes(good[0] + b"\n{damaged\n" + good[1] + b"\n" + good[2] + b"\n{torn")
    with caplog.at_level("WARNING"):
        state = StageState.open(path, "peter")
    state.close()
    assert sorted(state.seen) == ["a0", "a1", "a2"]  # nothing after the damaged line is lost
    assert "line 2 is damaged and was skipped; the journal was kept as" in caplog.text
    copies = list(tmp_path.glob("state-peter.json.journal.damaged-*"))
    assert len(copies) == 1 and b"{damaged" in copies[0].read_bytes()
