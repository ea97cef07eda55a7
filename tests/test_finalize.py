"""facesets finalize end to end: the fake Immich stage, the Windows side faked by a local worker, resume, changes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import psycopg
import pytest

from facesets.artifacts.cache import load_cache
from facesets.base.errors import DatabaseError, PathMappingError
from facesets.flow.finalize import FinalizeConfig, Step, run_finalize
from facesets.flow.winside import WindowsSide, powershell_command, running_under_wsl
from facesets.store.database import DatabaseConfig
from tests.conftest import REPO
from tests.fakeimmich import FakeImmich, SpecChecker
from tests.immichlib import NIC, PETER, Library
from tests.test_stage import checker, library, stage, workdir  # noqa: F401  (fixtures)

DRIVE = "Z:"


@pytest.fixture
def immich(library: Library, checker: SpecChecker) -> Iterator[FakeImmich]:  # noqa: F811
    """The fake Immich server (named apart from the PostgreSQL ``server`` fixture)."""
    with FakeImmich(library.assets, [PETER, NIC], checker) as fake:
        yield fake
    assert fake.violations == []


def to_fake_windows(path: str) -> str:
    """The tests' stand-in for /mnt/z: every absolute Linux path is on drive Z:."""
    return DRIVE + path.replace("/", "\\")


def from_fake_windows(arg: str) -> str:
    return arg[len(DRIVE) :].replace("\\", "/") if arg.startswith(DRIVE) else arg


class FakeWindows:
    """Runs the command line the Windows side would run, here, with the paths mapped back."""

    def __init__(self, pack_dir: Path) -> None:
        self.pack_dir = pack_dir
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> int:
        self.commands.append(list(command))
        local = [from_fake_windows(arg) for arg in command]
        return subprocess.run([sys.executable, *local[1:], "--model-dir", str(self.pack_dir)]).returncode


def config(workdir: Path, database: str, side: WindowsSide | None, **options: object) -> FinalizeConfig:  # noqa: F811
    return FinalizeConfig(
        user="peter",
        staging=workdir / "staging",
        caches=workdir / "caches",
        sets_dir=workdir / "facesets_swap_ready",
        database=DatabaseConfig(database),
        embed_side=side,
        min_faces=2,
        **options,  # type: ignore[arg-type]
    )


def windows(workdir: Path, pack_dir: Path) -> tuple[WindowsSide, FakeWindows]:  # noqa: F811
    fake = FakeWindows(pack_dir)
    return WindowsSide(workdir / "win", "python.exe", to_windows=to_fake_windows, run=fake), fake


def test_finalize_end_to_end_with_the_windows_side(
    immich: FakeImmich,
    workdir: Path,  # noqa: F811
    database: str,
    pack_dir: Path,
) -> None:
    assert stage(immich) == 0
    side, fake = windows(workdir, pack_dir)
    summary = run_finalize(config(workdir, database, side))
    assert summary.ran == ["embed", "cluster", "export", "load"] and summary.skipped == []
    command = fake.commands[0]
    assert command[:4] == ["python.exe", "-m", "facesets", "embed"]  # an installed facesets runs it
    assert command[4:] == ["--queue", to_fake_windows(str(workdir / "win" / "queue-peter.json")), "--cache",
                           to_fake_windows(str(workdir / "win" / "peter.npz"))]  # fmt: skip
    remote_queue = orjson.loads((workdir / "win" / "queue-peter.json").read_bytes())["entries"]
    assert all(entry["windows_path"] == to_fake_windows(entry["path"]) for entry in remote_queue)
    local, remote = load_cache(workdir / "caches" / "peter.npz"), load_cache(workdir / "win" / "peter.npz")
    assert len(local.images) == len(remote.images) == len(remote_queue) and local.face_count == remote.face_count
    sets = sorted(p.name for p in (workdir / "facesets_swap_ready").glob("faceset_*"))
    assert sets and summary.results["export"]["new_sets"] == sets
    with psycopg.connect(database) as conn:
        loaded = conn.execute("SELECT count(*) FROM face_sets").fetchone()[0]  # type: ignore[index]
    assert loaded == len(sets)
    state = orjson.loads((workdir / "staging" / "finalize-peter.json").read_bytes())
    assert state["format"] == "facesets.finalize" and sorted(state["steps"]) == ["cluster", "embed", "export", "load"]
    again = run_finalize(config(workdir, database, side))
    assert again.ran == [] and again.skipped == ["embed", "cluster", "export", "load"] and len(fake.commands) == 1


def test_a_failed_step_resumes_and_a_changed_input_reruns_the_right_steps(
    immich: FakeImmich,
    workdir: Path,  # noqa: F811
    database: str,
    pack_dir: Path,
) -> None:
    assert stage(immich) == 0
    unreachable = "postgresql://nobody@127.0.0.1:9/nothing?connect_timeout=2"
    with pytest.raises(DatabaseError, match="cannot reach the database server"):
        run_finalize(config(workdir, unreachable, None, model_dir=pack_dir))
    state = orjson.loads((workdir / "staging" / "finalize-peter.json").read_bytes())
    assert sorted(state["steps"]) == ["cluster", "embed", "export"]
    resumed = run_finalize(config(workdir, database, None, model_dir=pack_dir))
    assert resumed.ran == ["load"] and resumed.skipped == ["embed", "cluster", "export"]
    # a crop removed by hand from a set: the steps that read the sets run again, embedding does not
    crop = next(p for p in sorted((workdir / "facesets_swap_ready" / "faceset_001").glob("*.jpg")))
    crop.unlink()
    changed = run_finalize(config(workdir, database, None, model_dir=pack_dir))
    assert changed.ran == ["cluster", "export", "load"] and changed.skipped == ["embed"]
    settled = run_finalize(config(workdir, database, None, model_dir=pack_dir))
    assert settled.ran == []
    only = run_finalize(config(workdir, database, None, model_dir=pack_dir, steps=(Step.LOAD,), force=True))
    assert only.ran == ["load"] and only.skipped == []


def test_the_windows_side_refuses_paths_it_cannot_read(workdir: Path, pack_dir: Path) -> None:  # noqa: F811
    queue = workdir / "staging" / "queue-peter.json"
    queue.parent.mkdir()
    from facesets.artifacts.queue import QueueEntry, write_queue

    write_queue(queue, [QueueEntry(str(workdir / "a.jpg"), None, "a" * 64, 1)])
    side = WindowsSide(workdir / "win", "python.exe", run=FakeWindows(pack_dir))
    with pytest.raises(PathMappingError, match=r"1 queued file\(s\) have no Windows form"):
        side.embed(queue, workdir / "caches" / "peter.npz", "peter")


def test_a_checkouts_worker_script_runs_when_win_worker_names_it(
    workdir: Path,  # noqa: F811
    pack_dir: Path,
    sample_photos: list[Path],
) -> None:
    from facesets.artifacts.queue import scan_folders, write_queue

    (workdir / "photos").mkdir()
    (workdir / "photos" / "a.jpg").write_bytes(sample_photos[0].read_bytes())
    queue = workdir / "queue-peter.json"
    write_queue(queue, scan_folders([workdir / "photos"]).entries)
    script = REPO / "work" / "embed_worker.py"
    fake = FakeWindows(pack_dir)
    side = WindowsSide(workdir / "win", "py", script, to_windows=to_fake_windows, run=fake)
    side.embed(queue, workdir / "caches" / "peter.npz", "peter")
    assert fake.commands[0][:2] == ["py", to_fake_windows(str(script))]
    assert load_cache(workdir / "caches" / "peter.npz").images[0].status.value == "ok"


def test_make_per_user_targets_need_user_on_the_command_line() -> None:
    for target in ("stage", "embed", "finalize"):
        result = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True)
        assert result.returncode != 0 and f"USER= is required: make {target} USER=peter" in result.stderr
    given = subprocess.run(["make", "-n", "-C", str(REPO), "finalize", "USER=nic"], capture_output=True, text=True)
    assert given.returncode == 0 and "bash work/finalize_immich.sh nic" in given.stdout


def test_wsl_detection(tmp_path: Path) -> None:
    (tmp_path / "wsl").write_text("Linux version 5.15.153.1-microsoft-standard-WSL2 (gcc) #1 SMP")
    (tmp_path / "linux").write_text("Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org)")
    assert running_under_wsl(tmp_path / "wsl") and not running_under_wsl(tmp_path / "linux")
    assert not running_under_wsl(tmp_path / "missing")


def test_finalize_script_needs_a_user() -> None:
    result = subprocess.run(["bash", str(REPO / "work" / "finalize_immich.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: bash work/finalize_immich.sh USER" in result.stderr


def test_the_powershell_command_line_quotes_every_part() -> None:
    command = ["C:\\Program Files\\Python311\\python.exe", "Z:\\photos\\O'Brien\\Zoë $HOME.json"]
    assert powershell_command(command) == [
        "powershell.exe",
        "-NoProfile",
        "-NonInteractive",
        "-Command",
        "& 'C:\\Program Files\\Python311\\python.exe' 'Z:\\photos\\O''Brien\\Zoë $HOME.json'; exit $LASTEXITCODE",
    ]


@pytest.mark.slow
def test_kill_after_embed_then_resume(
    immich: FakeImmich,
    workdir: Path,  # noqa: F811
    database: str,
    pack_dir: Path,
) -> None:
    import os
    import signal
    import time

    assert stage(immich) == 0
    argv = [sys.executable, "-m", "facesets", "finalize", "--user", "peter", "--embed", "local", "--min-faces", "2"]
    argv += ["--model-dir", str(pack_dir), "--database", database, "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = workdir / "staging" / "finalize-peter.json"
    deadline = time.monotonic() + 120
    while not state.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)  # embed is recorded: the kill lands in cluster, export or load
    run.wait()
    recorded = sorted(orjson.loads(state.read_bytes())["steps"])
    assert "embed" in recorded and len(recorded) < 4
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    summary = orjson.loads(resumed.stdout)
    assert "embed" in summary["skipped"] and summary["ran"][-1] == "load"
    sets = sorted(p.name for p in (workdir / "facesets_swap_ready").glob("faceset_*"))
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM face_sets").fetchone()[0] == len(sets) > 0  # type: ignore[index]
