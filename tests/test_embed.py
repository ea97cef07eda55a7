import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from facesets.artifacts.cache import load_cache
from facesets.artifacts.queue import QueueEntry, scan_folders, write_queue
from facesets.artifacts.records import ImageStatus
from facesets.base.errors import CacheCorruptError
from facesets.base.settings import Mode
from facesets.cli import main
from facesets.embed.queue import EmbedConfig, run_embed
from tests import corpus
from tests.conftest import REPO, wait_for_segments


def photo_folder(tmp_path: Path, photos: dict[str, Path]) -> Path:
    """``tmp_path/photos`` holding a copy of each photo under its name."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, photo in photos.items():
        (folder / name).write_bytes(photo.read_bytes())
    return folder


def make_queue(folder: Path, queue: Path) -> list[QueueEntry]:
    entries = scan_folders([folder]).entries
    write_queue(queue, entries)
    return entries


def config(tmp_path: Path, pack_dir: Path, **changes: object) -> EmbedConfig:
    settings: dict[str, object] = {
        "queue": tmp_path / "queue.json",
        "cache": tmp_path / "faces.npz",
        "model_dir": pack_dir,
        **changes,
    }
    return EmbedConfig(**settings)  # type: ignore[arg-type]


def test_bad_input_corpus(tmp_path: Path, pack_dir: Path, faces_dir: Path) -> None:
    photos = tmp_path / "photos"
    expected = corpus.build(photos, faces_dir / "deepface" / "img1.jpg")
    make_queue(photos, tmp_path / "queue.json")
    stats = run_embed(config(tmp_path, pack_dir))
    assert stats.queued == len(expected) == 12
    assert (stats.errors, stats.embedded, stats.duplicates, stats.no_face) == (4, 8, 0, 0)
    assert stats.faces == 8  # one face in every decodable variant of the photo
    assert stats.error_reasons == {
        "truncated or damaged image": 1,
        "empty file": 1,
        "not an image": 1,
        "image too large": 1,
    }
    data = load_cache(tmp_path / "faces.npz")
    by_name = {Path(r.path).relative_to(photos).as_posix(): r for r in data.images}
    assert {name: r.status.value if r.status is not ImageStatus.OK else "ok" for name, r in by_name.items()} == expected
    upright = data.embeddings[int(np.nonzero(data.meta["image"] == data.images.index(by_name["upright.jpg"]))[0][0])]
    for name in ("photo.heic", "exif-rotated.jpg", "cmyk.jpg", "my photos/Zoë café.jpg", "rgba.png"):
        row = int(np.nonzero(data.meta["image"] == data.images.index(by_name[name]))[0][0])
        assert float(data.embeddings[row] @ upright) > 0.95, name
    assert by_name["exif-rotated.jpg"].width == by_name["upright.jpg"].width


def test_resume_skips_done_and_dedups_identical_bytes(
    tmp_path: Path, pack_dir: Path, sample_photos: list[Path]
) -> None:
    photos = photo_folder(tmp_path, {f"{index}.jpg": photo for index, photo in enumerate(sample_photos[:2])})
    make_queue(photos, tmp_path / "queue.json")
    first = run_embed(config(tmp_path, pack_dir))
    assert (first.embedded, first.already_done, first.duplicates) == (2, 0, 0)
    (photos / "copy-of-0.jpg").write_bytes((photos / "0.jpg").read_bytes())
    (photos / "2.jpg").write_bytes(sample_photos[2].read_bytes())
    make_queue(photos, tmp_path / "queue.json")
    second = run_embed(config(tmp_path, pack_dir))
    assert (second.queued, second.already_done, second.embedded, second.duplicates) == (4, 2, 1, 1)
    data = load_cache(tmp_path / "faces.npz")
    statuses = {Path(r.path).name: r.status for r in data.images}
    assert statuses["copy-of-0.jpg"] is ImageStatus.DUPLICATE
    assert data.face_count == 3


def test_errors_are_retried_only_when_asked(tmp_path: Path, pack_dir: Path, sample_photos: list[Path]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    broken = photos / "later.jpg"
    broken.write_bytes(b"")
    make_queue(photos, tmp_path / "queue.json")
    assert run_embed(config(tmp_path, pack_dir)).errors == 1
    broken.write_bytes(sample_photos[0].read_bytes())
    assert run_embed(config(tmp_path, pack_dir)).already_done == 1
    retried = run_embed(config(tmp_path, pack_dir, retry_errors=True))
    assert (retried.embedded, retried.errors, retried.changed_since_queued) == (1, 0, 1)
    assert [r.status for r in load_cache(tmp_path / "faces.npz").images] == [ImageStatus.OK]


def test_other_model_pack_is_refused(tmp_path: Path, pack_dir: Path, sample_photos: list[Path]) -> None:
    photos = photo_folder(tmp_path, {"a.jpg": sample_photos[0]})
    make_queue(photos, tmp_path / "queue.json")
    run_embed(config(tmp_path, pack_dir))
    fake_pack = tmp_path / "otherpack"
    fake_pack.mkdir()
    (fake_pack / "scrfd_500m_bnkps.onnx").symlink_to(pack_dir / "scrfd_500m_bnkps.onnx")
    (fake_pack / "w600k_mbf.onnx").write_bytes((pack_dir / "fr_feature.onnx").read_bytes() + b"\0")
    before = (tmp_path / "faces.npz").read_bytes()
    code = main(
        [
            "embed",
            "--queue",
            str(tmp_path / "queue.json"),
            "--cache",
            str(tmp_path / "faces.npz"),
            "--model-dir",
            str(fake_pack),
        ]
    )
    assert code == 1
    assert (tmp_path / "faces.npz").read_bytes() == before


def test_fast_mode_agrees_on_small_photos(tmp_path: Path, pack_dir: Path, sample_photos: list[Path]) -> None:
    photos = photo_folder(tmp_path, {f"{index}.jpg": photo for index, photo in enumerate(sample_photos[2:])})
    make_queue(photos, tmp_path / "queue.json")
    run_embed(config(tmp_path, pack_dir, mode=Mode.FAST))
    run_embed(config(tmp_path, pack_dir, cache=tmp_path / "full.npz"))
    reduced, full = load_cache(tmp_path / "faces.npz"), load_cache(tmp_path / "full.npz")
    assert reduced.face_count == full.face_count >= 2
    assert np.min(np.sum(reduced.embeddings * full.embeddings, axis=1)) > 0.99


def run_cli(args: list[str], cwd: Path, quiet: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stream = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "facesets", *args], cwd=cwd, env=env, stdout=stream, stderr=stream)


def cache_records(path: Path) -> list[tuple[str, str, int, tuple[float, ...]]]:
    data = load_cache(path)
    rows = []
    for index, record in enumerate(data.images):
        mine = np.nonzero(data.meta["image"] == index)[0]
        boxes = tuple(float(v) for row in mine for v in data.meta["bbox"][row])
        rows.append((record.path, record.status.value, record.faces, boxes))
    return rows


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path: Path, pack_dir: Path, faces_dir: Path) -> None:
    photos = sorted((faces_dir / "celeb5").rglob("*.jpg"))[:60]
    entries = [QueueEntry(str(p), None, "", p.stat().st_size) for p in photos]
    write_queue(tmp_path / "queue.json", entries)
    base = ["embed", "--queue", "queue.json", "--model-dir", str(pack_dir), "--flush-every", "5", "--json"]
    reference = run_cli([*base, "--cache", "ref.npz"], tmp_path)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    victim = run_cli([*base, "--cache", "killed.npz"], tmp_path, quiet=True)
    wait_for_segments(tmp_path / "killed.npz", 3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed.npz").exists()
    survived = len(load_cache(tmp_path / "killed.npz").images)
    assert 15 <= survived < 60
    resumed = run_cli([*base, "--cache", "killed.npz"], tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    stats = orjson.loads(out)
    assert stats["already_done"] == survived and stats["embedded"] == 60 - survived
    assert cache_records(tmp_path / "killed.npz") == cache_records(tmp_path / "ref.npz")
    killed, ref = load_cache(tmp_path / "killed.npz"), load_cache(tmp_path / "ref.npz")
    assert np.allclose(killed.embeddings, ref.embeddings, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "killed.npz.journal").exists()


def test_worker_runs_with_only_the_windows_modules(tmp_path: Path, pack_dir: Path, sample_photos: list[Path]) -> None:
    """work/embed_worker.py imports and runs when only requirements-win.txt's modules can be imported."""
    photos = photo_folder(tmp_path, {"a.jpg": sample_photos[0]})
    make_queue(photos, tmp_path / "queue.json")
    guard = textwrap.dedent(
        """
        import sys, runpy
        ALLOWED = {{"numpy", "PIL", "pillow_heif", "cv2", "simplejpeg", "onnxruntime", "blake3", "orjson", "click",
                   "facesets"}}
        THIRD_PARTY_PREFIXES = sys.prefix, sys.exec_prefix
        class Guard:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in ALLOWED or top in sys.stdlib_module_names or top.startswith("_"):
                    return None
                raise ImportError(f"blocked import of {{name}}: not in requirements-win.txt")
        sys.meta_path.insert(0, Guard())
        sys.argv = ["embed_worker.py", *sys.argv[1:]]
        try:
            runpy.run_path(sys.argv[0] if False else {!r}, run_name="__main__")
        finally:
            bad = sorted(m for m in sys.modules if m.split(".")[0] in {{"psycopg", "httpx", "insightface", "torch"}})
            print("FORBIDDEN", bad, file=sys.stderr)
        """.format(str(REPO / "work" / "embed_worker.py"))
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            guard,
            "--queue",
            "queue.json",
            "--cache",
            "w.npz",
            "--model-dir",
            str(pack_dir),
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "FORBIDDEN []" in result.stderr
    assert orjson.loads(result.stdout)["faces"] == 1


def test_a_pack_with_the_same_recognizer_adds_to_the_cache(
    tmp_path: Path, pack_dir: Path, sample_photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    photos = photo_folder(tmp_path, {"a.jpg": sample_photos[0]})
    make_queue(photos, tmp_path / "queue.json")
    run_embed(config(tmp_path, pack_dir))
    (photos / "b.jpg").write_bytes(sample_photos[1].read_bytes())
    make_queue(photos, tmp_path / "queue.json")
    other_pack = pack_dir.parent / "scrfd2.5g-mbf"  # another detector, the same recognizer: one embedding space
    args = ["embed", "--queue", str(tmp_path / "queue.json"), "--cache", str(tmp_path / "faces.npz")]
    assert main([*args, "--model-dir", str(other_pack), "--json"]) == 0, capsys.readouterr().err
    stats = orjson.loads(capsys.readouterr().out)
    assert (stats["already_done"], stats["embedded"]) == (1, 1)
    assert sorted(Path(r.path).name for r in load_cache(tmp_path / "faces.npz").images) == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_exits_with_the_resume_hint_and_the_rerun_finishes(
    tmp_path: Path, pack_dir: Path, faces_dir: Path, signum: int, code: int, word: str
) -> None:
    photos = sorted((faces_dir / "celeb5").rglob("*.jpg"))[:40]
    write_queue(tmp_path / "queue.json", [QueueEntry(str(p), None, "", p.stat().st_size) for p in photos])
    base = ["embed", "--queue", "queue.json", "--cache", "c.npz", "--model-dir", str(pack_dir), "--flush-every", "5"]
    victim = subprocess.Popen(
        [sys.executable, "-m", "facesets", *base],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_segments(tmp_path / "c.npz")
    victim.send_signal(signum)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == code, err
    assert f"{word}: what was flushed is kept; run the same command again to continue" in err
    assert "Traceback" not in err and "aborted" not in err
    kept = len(load_cache(tmp_path / "c.npz").images)
    assert 5 <= kept < 40
    again = run_cli([*base, "--json"], tmp_path)
    out, rerun_err = again.communicate(timeout=300)
    assert again.returncode == 0, rerun_err
    assert orjson.loads(out)["already_done"] == kept and len(load_cache(tmp_path / "c.npz").images) == 40


def test_fifos_devices_and_huge_files_are_counted_errors_in_bounded_time(
    tmp_path: Path, pack_dir: Path, sample_photos: list[Path]
) -> None:
    photos = photo_folder(tmp_path, dict.fromkeys(("good.jpg", "fifo.jpg", "zero.jpg", "big.jpg"), sample_photos[0]))
    make_queue(photos, tmp_path / "queue.json")
    (photos / "fifo.jpg").unlink()
    os.mkfifo(photos / "fifo.jpg")  # replaced by a FIFO after queueing: opening it must not block
    (photos / "zero.jpg").unlink()
    (photos / "zero.jpg").symlink_to("/dev/zero")
    with open(photos / "big.jpg", "r+b") as handle:
        handle.truncate(5 << 30)  # a 5 GB sparse file
    started = time.monotonic()
    stats = run_embed(config(tmp_path, pack_dir))
    assert time.monotonic() - started < 60
    assert stats.embedded == 1 and stats.errors == 3
    reasons = {Path(r.path).name: r.reason for r in load_cache(tmp_path / "faces.npz").images}
    assert reasons["fifo.jpg"] == "not a regular file (a FIFO)"
    assert reasons["zero.jpg"] == "not a regular file (a character device)"
    assert reasons["big.jpg"] == f"too large: {5 << 30:,} bytes, over --max-bytes {1 << 30:,}"
    small = run_embed(config(tmp_path, pack_dir, cache=tmp_path / "small.npz", max_bytes=1000))
    assert small.errors == 4 and small.embedded == 0


def test_queue_add_skips_what_is_not_a_regular_file(tmp_path: Path, sample_photos: list[Path]) -> None:
    photos = photo_folder(tmp_path, {"good.jpg": sample_photos[0]})
    os.mkfifo(photos / "fifo.jpg")
    (photos / "zero.jpg").symlink_to("/dev/zero")
    result = scan_folders([photos])
    assert [Path(entry.path).name for entry in result.entries] == ["good.jpg"]


def test_out_of_memory_is_not_recorded_and_the_next_run_retries(
    tmp_path: Path, pack_dir: Path, sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import facesets.models.decode as decode_module

    photos = photo_folder(tmp_path, {f"{index}.jpg": photo for index, photo in enumerate(sample_photos[:3])})
    make_queue(photos, tmp_path / "queue.json")
    real = decode_module._decode
    victim = (photos / "1.jpg").read_bytes()

    def pressure(data: bytes, *args: object) -> object:
        if data == victim:
            raise MemoryError
        return real(data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_module, "_decode", pressure)
    first = run_embed(config(tmp_path, pack_dir))
    assert (first.embedded, first.errors) == (2, 1)
    assert first.error_reasons == {"out of memory": 1}
    assert sorted(Path(r.path).name for r in load_cache(tmp_path / "faces.npz").images) == ["0.jpg", "2.jpg"]
    monkeypatch.setattr(decode_module, "_decode", real)
    second = run_embed(config(tmp_path, pack_dir))
    assert (second.already_done, second.embedded, second.errors) == (2, 1, 0)


def test_a_name_that_is_not_utf8_is_a_counted_skip_of_queue_add(tmp_path: Path, sample_photos: list[Path]) -> None:
    photos = photo_folder(tmp_path, {"good.jpg": sample_photos[0]})
    with open(os.fsencode(photos) + b"/bad-\xff.jpg", "wb") as handle:
        handle.write(sample_photos[0].read_bytes())
    result = scan_folders([photos])
    assert [Path(entry.path).name for entry in result.entries] == ["good.jpg"]
    assert [why for _, why in result.skipped] == ["file name is not valid UTF-8"]
    write_queue(tmp_path / "queue.json", result.entries)  # the queue stays writable JSON


def test_embed_refuses_to_add_to_a_damaged_cache(tmp_path: Path, pack_dir: Path, sample_photos: list[Path]) -> None:
    photos = photo_folder(tmp_path, {"a.jpg": sample_photos[0]})
    make_queue(photos, tmp_path / "queue.json")
    run_embed(config(tmp_path, pack_dir))
    damaged = bytearray((tmp_path / "faces.npz").read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)
    (tmp_path / "faces.npz").write_bytes(bytes(damaged))
    with pytest.raises(CacheCorruptError, match="is not a readable facesets cache"):
        run_embed(config(tmp_path, pack_dir))
    assert (tmp_path / "faces.npz").read_bytes() == bytes(damaged)


@pytest.mark.parametrize("mode", [Mode.REFERENCE, Mode.FAST])
def test_reused_decode_memory_gives_the_faces_of_fresh_memory(
    tmp_path: Path, pack_dir: Path, sample_photos: list[Path], mode: Mode
) -> None:
    """Two inference and two io threads decode into memory lent and given back while other images are in
    flight (and, in fast mode, decode again finer for small faces): every face and embedding is exactly what a
    one-image-at-a-time decode into fresh memory gives."""
    from PIL import Image

    from facesets.models.decode import DecodedImage, decode
    from facesets.models.faces import build_engine
    from facesets.models.packs import resolve_pack
    from facesets.models.runtime import runtime_options

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(8):  # 5.8 MP: a big face and a small one (fast mode decodes those again, finer)
        canvas = Image.new("RGB", (3200, 1800), (90 + 10 * index, 120, 140))
        with (
            Image.open(sample_photos[index % len(sample_photos)]) as big,
            Image.open(sample_photos[(index + 3) % len(sample_photos)]) as small,
        ):
            canvas.paste(big.convert("RGB").resize((900, 900)), (100, 200))
            canvas.paste(small.convert("RGB").resize((360, 360)), (2400, 500))
        canvas.save(photos / f"{index}.jpg", quality=90)
    make_queue(photos, tmp_path / "queue.json")
    stats = run_embed(config(tmp_path, pack_dir, mode=mode, concurrency=2, io_concurrency=2))
    assert stats.embedded == 8
    cache = load_cache(tmp_path / "faces.npz")
    engine = build_engine(resolve_pack(pack_dir), runtime_options(), square=mode is Mode.REFERENCE)
    fit = 1280 if mode is Mode.FAST else None
    finer: list[float] = []

    def redecode(data: bytes, scale: float) -> DecodedImage:
        finer.append(scale)
        return decode(data, scale)

    for index, record in enumerate(cache.images):
        data = Path(record.path).read_bytes()
        faces = engine.analyze(decode(data, fit=fit), lambda scale, data=data: redecode(data, scale))  # type: ignore[misc]
        rows = np.flatnonzero(cache.meta["image"] == index)
        assert len(rows) == len(faces) >= 2, record.path
        assert np.array_equal(cache.embeddings[rows], np.stack([face.embedding for face in faces])), record.path
    assert len(finer) == (8 if mode is Mode.FAST else 0)
