"""``facesets embed --scheduler``: the embed stage on real Dask workers (worker processes on loopback), real
models and photos; every result is compared with a local run of the same queue."""

from __future__ import annotations

import http.server
import io
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any

import dask
import numpy as np
import orjson
import pytest
from distributed import Client, LocalCluster

from facesets.artifacts.cache import CacheData, journal_segments, load_cache
from facesets.artifacts.queue import QueueEntry, read_queue, scan_folders, write_queue
from facesets.artifacts.records import ImageStatus
from facesets.base.errors import ConfigError, WorkerRefusedError
from facesets.base.progress import Progress
from facesets.embed import scheduler
from facesets.embed.queue import EmbedConfig, run_embed
from facesets.embed.scheduler import DistributedConfig, Pending, guided_size, parse_resources, run_distributed
from facesets.embed.shards import PathMap, Shard, WorkerSpec, worker_path
from facesets.models.packs import MODEL_ROOT_ENV, resolve_pack
from tests.conftest import REPO, wait_for_segments

PHOTOS = 36


def start_cluster(workers: int, threads: int = 1, **options: Any) -> LocalCluster:
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # loopback, any free port (its default, 8787, may be taken)
        silence_logs=logging.CRITICAL,
        **options,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two worker processes of two threads each (as the README starts them): two shards at once in each."""
    with start_cluster(2, threads=2) as running:
        yield running


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, pack_dir: Path) -> Path:
    """A folder of real photos with a copy of one (a duplicate) and a truncated JPEG, its queue, and the cache
    a local run makes of it (``reference.npz``)."""
    root = tmp_path_factory.mktemp("library")
    photos = root / "photos"
    photos.mkdir()
    for number, photo in enumerate(sorted((faces_dir / "celeb5").rglob("*.jpg"))[:PHOTOS]):
        shutil.copyfile(photo, photos / f"{number:03d}.jpg")
    shutil.copyfile(photos / "000.jpg", photos / "copy-of-000.jpg")
    (photos / "truncated.jpg").write_bytes((photos / "001.jpg").read_bytes()[:700])
    write_queue(root / "queue.json", scan_folders([photos]).entries)
    run_embed(EmbedConfig(root / "queue.json", root / "reference.npz", model_dir=pack_dir))
    return root


def embed_config(library: Path, cache: Path, pack_dir: Path | None, **changes: Any) -> EmbedConfig:
    return EmbedConfig(library / "queue.json", cache, model_dir=pack_dir, **changes)


def assert_same_cache(found: Path, expected: Path) -> None:
    """The same image records, face rows and embeddings (boxes within 1e-4)."""
    ours, theirs = load_cache(found), load_cache(expected)
    assert ours.images == theirs.images
    assert ours.identity == theirs.identity
    assert len(ours.meta) == len(theirs.meta) > PHOTOS // 2
    assert np.array_equal(ours.meta["image"], theirs.meta["image"])
    assert np.abs(ours.meta["bbox"] - theirs.meta["bbox"]).max() <= 1e-4
    assert np.array_equal(ours.embeddings, theirs.embeddings)
    assert ours.aliases == theirs.aliases


def expected_shards(library: Path, threads: int, largest: int) -> int:
    """How many shards the driver cuts the library's queue into, with ``threads`` worker threads."""
    pending, count = Pending(read_queue(library / "queue.json")), 0
    while pending.take(guided_size(pending.remaining, threads, largest)):
        count += 1
    return count


def statuses(data: CacheData) -> dict[str, ImageStatus]:
    return {Path(record.path).name: record.status for record in data.images}


def run_cli(args: list[str], cwd: Path, **options: Any) -> subprocess.Popen[str]:
    options.setdefault("env", {**os.environ, "PYTHONPATH": str(REPO)})
    return subprocess.Popen(
        [sys.executable, "-m", "facesets", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_two_workers_make_the_cache_a_local_run_makes(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    args = ["embed", "--queue", str(library / "queue.json"), "--cache", "d.npz", "--model-dir", str(pack_dir)]
    driver = run_cli([*args, "--scheduler", cluster.scheduler_address, "--shard-size", "5", "--json"], tmp_path)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")
    stats = orjson.loads(out)
    assert (stats["embedded"], stats["duplicates"], stats["errors"]) == (PHOTOS, 1, 1)
    assert stats["shards"] == expected_shards(library, 4, 5) and stats["shipped"] == 0
    workers = stats["workers"]
    assert len(workers) == 2 and sum(w["images"] for w in workers.values()) == PHOTOS + 2
    assert all(w["images"] > 0 and w["img_s"] > 0 for w in workers.values())
    assert stats["error_reasons"] == {"truncated or damaged image": 1}
    assert statuses(load_cache(tmp_path / "d.npz"))["copy-of-000.jpg"] is ImageStatus.DUPLICATE
    again = run_cli([*args, "--scheduler", cluster.scheduler_address, "--json"], tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert orjson.loads(out)["already_done"] == PHOTOS + 2 and orjson.loads(out)["shards"] == 0


class KillWorkerAt(Progress):
    """A silent progress bar that SIGKILLs one worker process when ``at`` images are recorded."""

    def __init__(self, total: int, client: Client, at: int) -> None:
        super().__init__(total, "embed", enabled=False)
        self.client, self.at, self.killed = client, at, 0

    def advance(self, count: int = 1) -> None:
        super().advance(count)
        if self.done == self.at:
            pids: dict[str, int] = self.client.run(os.getpid)
            busy = self.client.processing()
            victim = max(pids, key=lambda address: len(busy.get(address, ())))
            self.killed = pids[victim]
            os.kill(self.killed, signal.SIGKILL)


def test_a_worker_killed_in_the_middle_changes_nothing(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    bars: list[KillWorkerAt] = []
    with Client(cluster.scheduler_address, set_as_default=False) as client:

        def progress(total: int) -> Progress:
            bars.append(KillWorkerAt(total, client, at=6))
            return bars[0]

        spread = DistributedConfig(cluster.scheduler_address, shard_size=3)
        stats = run_distributed(embed_config(library, tmp_path / "d.npz", pack_dir), spread, progress)
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed one, for the next tests
    assert bars[0].killed and bars[0].done == PHOTOS + 2
    with pytest.raises(ProcessLookupError):
        os.kill(bars[0].killed, 0)
    assert stats.embedded == PHOTOS and stats.duplicates == 1 and stats.errors == 1
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")
    paths = [record.path for record in load_cache(tmp_path / "d.npz").images]
    assert len(paths) == len(set(paths)) == PHOTOS + 2


def test_a_shard_whose_worker_dies_each_time_is_split_until_the_rest_is_embedded(
    library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    """With no failure allowed, Dask gives up on the shard of the killed worker at once (KilledWorker, what it
    does after three deaths by default): the driver splits it and the halves are embedded elsewhere."""
    bars: list[KillWorkerAt] = []
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        start_cluster(2) as strict,
        Client(strict.scheduler_address, set_as_default=False) as client,
    ):

        def progress(total: int) -> Progress:
            bars.append(KillWorkerAt(total, client, at=6))
            return bars[0]

        spread = DistributedConfig(strict.scheduler_address, shard_size=4)
        stats = run_distributed(embed_config(library, tmp_path / "d.npz", pack_dir), spread, progress)
    assert bars[0].killed and stats.resubmitted_shards >= 2  # the halves of the killed worker's shard(s)
    assert stats.errors == 1 and stats.error_reasons == {"truncated or damaged image": 1}
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")


def test_the_driver_killed_with_sigkill_resumes_to_the_same_cache(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    args = ["embed", "--queue", str(library / "queue.json"), "--cache", "d.npz", "--model-dir", str(pack_dir)]
    args += ["--scheduler", cluster.scheduler_address, "--shard-size", "2", "--flush-every", "2"]
    victim = run_cli(args, tmp_path)
    wait_for_segments(tmp_path / "d.npz", 3)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    survived = len(load_cache(tmp_path / "d.npz").images)
    assert 6 <= survived < PHOTOS
    resumed = run_cli([*args, "--json"], tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert orjson.loads(out)["already_done"] == survived
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")


class InterruptAt(Progress):
    """A silent progress bar that raises KeyboardInterrupt (Ctrl-C) when ``at`` images are recorded."""

    def __init__(self, total: int, at: int) -> None:
        super().__init__(total, "embed", enabled=False)
        self.at = at

    def advance(self, count: int = 1) -> None:
        super().advance(count)
        if self.done == self.at:
            raise KeyboardInterrupt


def test_ctrl_c_on_the_driver_flushes_what_came_back(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    config = embed_config(library, tmp_path / "d.npz", pack_dir, flush_every=1000)
    with pytest.raises(KeyboardInterrupt):
        run_distributed(config, DistributedConfig(cluster.scheduler_address, 3), lambda total: InterruptAt(total, 7))
    assert len(load_cache(tmp_path / "d.npz").images) == 7  # no flush was due: flushed on the way out
    stats = run_distributed(config, DistributedConfig(cluster.scheduler_address, 3))
    assert stats.already_done == 7 and stats.embedded + stats.duplicates + stats.errors == PHOTOS + 2 - 7
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_on_the_driver_exits_flushed(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path, signum: int, code: int
) -> None:
    args = ["embed", "--queue", str(library / "queue.json"), "--cache", "d.npz", "--model-dir", str(pack_dir)]
    args += ["--scheduler", cluster.scheduler_address, "--shard-size", "2", "--flush-every", "2"]
    victim = run_cli(args, tmp_path)
    wait_for_segments(tmp_path / "d.npz")
    victim.send_signal(signum)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == code, err
    assert "what was flushed is kept" in err and "Traceback" not in err
    assert 2 <= len(load_cache(tmp_path / "d.npz").images) < PHOTOS + 2


def test_a_path_no_worker_sees_is_shipped_and_one_nobody_sees_is_an_image_error(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    entries = read_queue(library / "queue.json")
    gone = QueueEntry(str(tmp_path / "gone.jpg"), None, "", 10)
    write_queue(tmp_path / "queue.json", [*entries, gone])
    blind = (PathMap(str(library / "photos"), str(tmp_path / "not-mounted")),)  # every worker looks in vain
    spread = DistributedConfig(cluster.scheduler_address, shard_size=8, maps=blind)
    config = EmbedConfig(tmp_path / "queue.json", tmp_path / "d.npz", model_dir=pack_dir)
    stats = run_distributed(config, spread)
    assert stats.shipped == PHOTOS + 2 and stats.errors == 2
    assert stats.error_reasons == {"truncated or damaged image": 1, "unreadable": 1}
    data = load_cache(tmp_path / "d.npz")
    assert statuses(data)["gone.jpg"] is ImageStatus.ERROR
    assert "No such file" in next(r.reason for r in data.images if r.path == gone.path)
    reference = load_cache(library / "reference.npz")
    assert [r for r in data.images if r.path != gone.path] == reference.images
    assert np.array_equal(data.embeddings, reference.embeddings)


def test_ship_bytes_sends_every_image_and_gives_the_same_cache(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    spread = DistributedConfig(cluster.scheduler_address, shard_size=16, ship_bytes=True)
    stats = run_distributed(embed_config(library, tmp_path / "d.npz", pack_dir), spread)
    assert stats.shipped == PHOTOS + 2 and stats.shards == expected_shards(library, 4, 16)
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")


def test_a_worker_with_another_pack_is_refused_naming_both_packs(
    library: Path, pack_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "models" / pack_dir.name  # the name of the driver's pack, the files of another
    other.mkdir(parents=True)
    for model in (pack_dir.parent / "scrfd2.5g-mbf").iterdir():
        shutil.copyfile(model, other / model.name)
    monkeypatch.setenv(MODEL_ROOT_ENV, str(pack_dir.parent))
    config = embed_config(library, tmp_path / "d.npz", None, model_pack=pack_dir.name)
    with (
        start_cluster(1, env={MODEL_ROOT_ENV: str(other.parent)}) as wrong,
        pytest.raises(WorkerRefusedError) as refused,
    ):
        run_distributed(config, DistributedConfig(wrong.scheduler_address, shard_size=8))
    message = str(refused.value)
    assert "scrfd_2.5g.onnx" in message and "scrfd_500m_bnkps.onnx" in message
    assert str(other) in message and "embeddings of two packs never mix" in message
    assert not (tmp_path / "d.npz").exists() and not journal_segments(tmp_path / "d.npz")


def test_the_scheduler_going_away_stops_with_exit_2_and_the_same_command_resumes(
    library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    def start() -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]:
        file = tmp_path / "scheduler.json"
        file.unlink(missing_ok=True)
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        command = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
        scheduler = subprocess.Popen([*command, "--no-dashboard", "--scheduler-file", str(file)], **quiet)
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        address = str(orjson.loads(file.read_bytes())["address"])
        command = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard"]
        return scheduler, subprocess.Popen([*command, "--no-nanny"], **quiet), address

    scheduler, worker, address = start()
    args = ["embed", "--queue", str(library / "queue.json"), "--cache", "d.npz", "--model-dir", str(pack_dir)]
    args += ["--shard-size", "2", "--flush-every", "1000"]
    try:
        driver = run_cli([*args, "--scheduler", address, "--flush-every", "2"], tmp_path)
        wait_for_segments(tmp_path / "d.npz")
        scheduler.kill()
        _, err = driver.communicate(timeout=120)
    finally:
        for process in (scheduler, worker):
            process.kill()
            process.wait()
    assert driver.returncode == 2, err
    assert f"error: the Dask scheduler at {address} went away" in err and "Traceback" not in err
    kept = len(load_cache(tmp_path / "d.npz").images)
    assert 2 <= kept < PHOTOS + 2
    scheduler, worker, address = start()
    try:
        resumed = run_cli([*args, "--scheduler", address, "--json"], tmp_path)
        out, err = resumed.communicate(timeout=300)
    finally:
        for process in (scheduler, worker):
            process.kill()
            process.wait()
    assert resumed.returncode == 0, err
    assert orjson.loads(out)["already_done"] == kept
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")


def test_an_unreachable_scheduler_and_misused_options_are_clear_errors(
    library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    args = ["embed", "--queue", str(library / "queue.json"), "--cache", "d.npz", "--model-dir", str(pack_dir)]
    refused = run_cli([*args, "--scheduler", "tcp://127.0.0.1:9", "--json"], tmp_path)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "Traceback" not in err
    assert err.startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert not (tmp_path / "d.npz").exists() and not journal_segments(tmp_path / "d.npz")
    alone = run_cli([*args, "--ship-bytes", "--path-map", "/a=/b"], tmp_path)
    _, err = alone.communicate(timeout=60)
    assert alone.returncode == 2 and "--path-map, --ship-bytes apply only with --scheduler" in err
    for option, value, why in (
        ("--resources", "dml", "'dml' is not NAME=AMOUNT"),
        ("--resources", "dml=inf", "'dml=inf' is not NAME=AMOUNT"),
        ("--path-map", "/only-one-side", "'/only-one-side' is not FROM=TO"),
    ):
        bad = run_cli([*args, "--scheduler", "tcp://127.0.0.1:9", option, value], tmp_path)
        _, err = bad.communicate(timeout=60)
        assert bad.returncode == 2 and why in err, err
    empty = run_cli([*args, "--scheduler", " "], tmp_path)
    _, err = empty.communicate(timeout=60)
    assert empty.returncode == 2 and "Invalid value for --scheduler: is empty" in err


def test_a_port_where_no_dask_scheduler_answers_is_a_clear_error_in_bounded_time(
    library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    """An HTTP server (a dashboard port, say) that answers with a 400, and one that never answers: each is
    "cannot reach" with exit 2, within the connect timeout, and no traceback at exit."""

    class Answer400(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(400)

        def log_message(self, *args: Any) -> None:
            pass

    answering = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer400)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections and never says a word
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    args = ["embed", "--queue", str(library / "queue.json"), "--cache", "d.npz", "--model-dir", str(pack_dir)]
    try:
        for port in (answering.server_address[1], silent.getsockname()[1]):
            started = time.monotonic()
            driver = run_cli([*args, "--scheduler", f"tcp://127.0.0.1:{port}"], tmp_path)
            _, err = driver.communicate(timeout=120)
            assert driver.returncode == 2, err
            assert err.startswith(f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"), err
            assert "Traceback" not in err and "Exception ignored" not in err and "bug in facesets" not in err
            assert time.monotonic() - started < 40
    finally:
        answering.shutdown()
        answering.server_close()
        silent.close()


def test_finalize_embeds_on_dask_workers_with_embed_dask(
    cluster: LocalCluster, library: Path, pack_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "staging").mkdir()
    shutil.copyfile(library / "queue.json", tmp_path / "staging" / "queue-nic.json")
    env = {"EMBED": "dask", "DASK_SCHEDULER": cluster.scheduler_address}
    args = ["finalize", "--user", "nic", "--steps", "embed", "--model-dir", str(pack_dir), "--json"]
    done = run_cli(
        [*args, "--shard-size", "8", "--ship-bytes"], tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), **env}
    )
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    result = orjson.loads(out)["results"]["embed"]
    assert result["where"] == "dask" and result["scheduler"] == cluster.scheduler_address
    assert result["shards"] == expected_shards(library, 4, 8) and result["shipped"] == PHOTOS + 2
    assert sum(worker["images"] for worker in result["workers"].values()) == PHOTOS + 2
    assert_same_cache(tmp_path / "caches" / "nic.npz", library / "reference.npz")
    missing = run_cli(["finalize", "--user", "nic", "--embed", "dask"], tmp_path)
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 1 and "--embed dask needs --scheduler (DASK_SCHEDULER)" in err
    for extra, why in (
        (["--embed", "local", "--shard-size", "8"], "--shard-size applies only with --embed dask"),
        (["--embed", "local", "--scheduler", cluster.scheduler_address], "--scheduler applies only with --embed dask"),
    ):
        refused = run_cli(["finalize", "--user", "nic", *extra], tmp_path)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 2 and why in err, err


def test_the_local_embed_does_not_import_dask(library: Path, pack_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from facesets.cli.main import main; "
        f"code = main(['embed', '--queue', {str(library / 'queue.json')!r}, '--cache', 'l.npz', "
        f"'--model-dir', {str(pack_dir)!r}, '--json']); "
        "print('dask' in sys.modules or 'distributed' in sys.modules, code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip().splitlines()[-1] == "False 0", done.stderr


def test_a_shard_carries_no_path_object_of_this_platform(library: Path, pack_dir: Path) -> None:
    """A Windows worker cannot unpickle a PosixPath: a shard is plain values only."""
    config = embed_config(library, library / "x.npz", pack_dir)
    entry = read_queue(library / "queue.json")[0]
    shard = Shard(1, (entry,), WorkerSpec.of(config), resolve_pack(pack_dir).identity(), data={entry.path: b"x"})

    class NoPaths(pickle.Pickler):
        def reducer_override(self, obj: object) -> Any:
            assert not isinstance(obj, PurePath), f"a path object in the shard: {obj!r}"
            return NotImplemented

    NoPaths(io.BytesIO()).dump(shard)
    assert shard.spec.embed_config() == replace(config, queue=Path(), cache=Path())


def test_shards_keep_twins_together_and_path_maps_apply_to_either_form() -> None:
    def entry(name: str, digest: str) -> QueueEntry:
        return QueueEntry(f"/mnt/d/photos/{name}", f"D:\\photos\\{name}", digest, 1)

    entries = [entry("a", "h1"), entry("b", "h2"), entry("c", "h1"), entry("d", ""), entry("e", "")]
    pending = Pending(entries)
    assert [e.path[-1] for e in pending.take(1)] == ["a", "c"] and pending.remaining == 3
    assert [e.path[-1] for e in pending.take(2)] == ["b", "d"]
    assert [e.path[-1] for e in pending.take(2)] == ["e"] and pending.take(2) == () and pending.remaining == 0
    assert [guided_size(n, 2, 64) for n in (100_000, 512, 511, 40, 7, 0)] == [64, 64, 63, 5, 1, 1]
    maps = (PathMap.parse("/mnt/d=/srv/d"), PathMap.parse("D:\\photos=//nas/photos"))
    assert worker_path(entry("x.jpg", ""), maps) == "/srv/d/photos/x.jpg"
    assert worker_path(entry("x.jpg", ""), maps[1:]) == "//nas/photos\\x.jpg"
    assert worker_path(entry("x.jpg", ""), ()) == "/mnt/d/photos/x.jpg"
    with pytest.raises(ConfigError, match="is not FROM=TO"):
        PathMap.parse("/only-one-side")
    assert parse_resources("dml=1, gpu=0.5") == (("dml", 1.0), ("gpu", 0.5))
    with pytest.raises(ValueError, match="'gpu=0' is not NAME=AMOUNT"):
        parse_resources("gpu=0")


def test_a_silent_wait_is_explained_and_ends_when_a_fitting_worker_joins(
    library: Path, pack_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Shards that need --resources dml=1 wait for a worker that offers it; the driver says so while it waits,
    and a dml worker joining later does the work."""
    monkeypatch.setattr(scheduler, "QUIET_SECONDS", 1.0)
    spread = DistributedConfig("", shard_size=16, resources=(("dml", 1.0),))
    stats: list[Any] = []
    with start_cluster(1) as plain:  # offers no dml
        spread = replace(spread, scheduler=plain.scheduler_address)
        config = embed_config(library, tmp_path / "d.npz", pack_dir)
        driver = threading.Thread(target=lambda: stats.append(run_distributed(config, spread)))
        with caplog.at_level(logging.WARNING, logger="facesets.embed.scheduler"):
            driver.start()
            deadline = time.monotonic() + 60
            while "no shard has come back" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "offers --resources dml=1 yet: the shards wait for one" in caplog.text
            assert "no shard has come back for 1 s; 1 worker at" in caplog.text
            assert "and the shards need --resources dml=1" in caplog.text
            command = [sys.executable, "-m", "distributed.cli.dask_worker", plain.scheduler_address]
            worker = subprocess.Popen(
                [*command, "--nthreads", "2", "--resources", "dml=1", "--no-dashboard", "--no-nanny"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                driver.join(timeout=120)
            finally:
                worker.kill()
                worker.wait()
    assert not driver.is_alive() and stats[0].embedded == PHOTOS
    assert_same_cache(tmp_path / "d.npz", library / "reference.npz")
