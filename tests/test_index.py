import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from facesets.artifacts.cache import load_cache
from facesets.artifacts.indexstate import IndexState
from facesets.artifacts.layout import FACE_CACHE, INDEX_STATE
from facesets.base.errors import CacheError, ConfigError, ModelPackError
from facesets.embed.backfill import run_backfill
from facesets.embed.index import FaceModel, IndexConfig, run_index
from facesets.models.faces import FaceEngine
from facesets.models.packs import PackIdentity
from tests.conftest import REPO, wait_for_segments


def make_gallery(folder: Path, photos: dict[str, Path], metadata: bytes = b'{"title": "t"}') -> Path:
    folder.mkdir(parents=True)
    (folder / "index.json").write_bytes(metadata)
    (folder / "tn").mkdir()
    for name, source in photos.items():
        (folder / name).write_bytes(source.read_bytes())
        (folder / "tn" / name).write_bytes(source.read_bytes())  # thumbnails are never indexed
    return folder


@pytest.fixture
def tree(tmp_path: Path, faces_dir: Path) -> Path:
    """root/chunk1/{a,b}, root/chunk2/c: 6 photo files, 5 distinct contents (b/dup.jpg repeats a/1.jpg)."""
    deepface, madonna = faces_dir / "deepface", faces_dir / "celeb5" / "madonna"
    root = tmp_path / "root"
    make_gallery(root / "chunk1" / "a", {"1.jpg": deepface / "img1.jpg", "2.jpg": deepface / "img2.jpg"})
    make_gallery(root / "chunk1" / "b", {"3.jpg": madonna / "train_01.jpg", "dup.jpg": deepface / "img1.jpg"})
    make_gallery(
        root / "chunk2" / "c",
        {"4.jpg": madonna / "train_02.jpg", "5.jpg": deepface / "img3.jpg"},
        metadata=b"{not json",
    )
    (root / "chunk1" / "a" / "extras").mkdir()
    (root / "chunk1" / "a" / "extras" / "x.jpg").write_bytes((deepface / "img4.jpg").read_bytes())
    (root / "chunk1" / "a" / "notes.txt").write_text("not an image")
    (root / "chunk2" / "loop").symlink_to(root)
    return root


class NoFaces:
    """A face model that does no face work and reads no pixels (what the index benchmark plugs in)."""

    identity = PackIdentity("none", "none", "0" * 64, "none", "0" * 64)
    reads_pixels = False

    def engine(self) -> FaceEngine:
        raise AssertionError("a model that reads no pixels is never asked for an engine")


def index(
    tmp_path: Path,
    pack_dir: Path,
    *targets: Path,
    caches: str = "caches",
    face_model: FaceModel | None = None,
    **changes: object,
) -> dict:
    """Faces only unless a CLIP model is given (``clip_dir=``)."""
    changes.setdefault("no_clip", "clip_dir" not in changes)
    settings: dict[str, object] = {
        "targets": targets,
        "caches": tmp_path / caches,
        "model_dir": pack_dir,
        "concurrency": 2,
        **changes,
    }
    return run_index(IndexConfig(**settings), face_model=face_model).as_dict()  # type: ignore[arg-type]


COUNTERS = (
    "galleries_seen",
    "galleries_skipped",
    "files_stated",
    "files_skipped_by_size",
    "files_read",
    "files_deduped",
    "files_embedded",
    "files_failed",
    "files_removed",
)


def counters(stats: dict) -> dict:
    return {key: stats[key] for key in COUNTERS}


def test_first_index_then_no_op(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    first = index(tmp_path, pack_dir, tree)
    assert counters(first) == {
        "galleries_seen": 3,
        "galleries_skipped": 0,
        "files_stated": 6,
        "files_skipped_by_size": 0,
        "files_read": 6,
        "files_deduped": 1,
        "files_embedded": 5,
        "files_failed": 0,
        "files_removed": 0,
    }
    assert first["faces_found"] >= 5
    assert first["skip_reasons"] == {"malformed index.json": 1, "folder already visited": 1}
    cache = load_cache(tmp_path / "caches" / FACE_CACHE)
    assert len(cache.images) == 5 and not any("/tn/" in r.path or "extras" in r.path for r in cache.images)
    second = index(tmp_path, pack_dir, tree)
    assert counters(second) == {
        **counters(first),
        "galleries_skipped": 3,
        "files_read": 0,
        "files_deduped": 0,
        "files_embedded": 0,
    }
    state = IndexState(tmp_path / "caches" / INDEX_STATE)
    assert state.counts() == {
        "galleries": 3,
        "galleries_complete": 3,
        "gallery_images": 6,
        "images": 5,
        "faces": first["faces_found"],
    }
    state.close()


def test_changes_are_picked_up(tmp_path: Path, pack_dir: Path, tree: Path, faces_dir: Path) -> None:
    index(tmp_path, pack_dir, tree)
    gallery_a, gallery_c = tree / "chunk1" / "a", tree / "chunk2" / "c"
    (gallery_a / "new.jpg").write_bytes((faces_dir / "deepface" / "img5.jpg").read_bytes())
    (gallery_c / "5.jpg").unlink()
    stats = index(tmp_path, pack_dir, tree)
    assert counters(stats) == {
        "galleries_seen": 3,
        "galleries_skipped": 1,
        "files_stated": 6,
        "files_skipped_by_size": 3,
        "files_read": 1,
        "files_deduped": 0,
        "files_embedded": 1,
        "files_failed": 0,
        "files_removed": 1,
    }
    (gallery_a / "2.jpg").write_bytes((faces_dir / "deepface" / "img6.jpg").read_bytes())  # another size
    stats = index(tmp_path, pack_dir, tree)
    assert (stats["galleries_skipped"], stats["files_read"], stats["files_embedded"]) == (2, 1, 1)


def test_same_size_edit_needs_reindex(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    index(tmp_path, pack_dir, tree)
    target = tree / "chunk1" / "a" / "2.jpg"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes
    target.write_bytes(bytes(data))
    assert index(tmp_path, pack_dir, tree)["files_read"] == 0  # documented: not seen
    stats = index(tmp_path, pack_dir, tree, reindex=True)
    assert (stats["galleries_skipped"], stats["files_read"], stats["files_deduped"], stats["files_embedded"]) == (
        0,
        6,
        5,
        1,
    )


def test_dedup_across_galleries_and_targets(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    index(tmp_path, pack_dir, tree / "chunk1" / "a")
    stats = index(tmp_path, pack_dir, tree / "chunk1" / "b", tree / "chunk2" / "c")
    assert (stats["galleries_seen"], stats["files_deduped"], stats["files_embedded"]) == (2, 1, 3)


def test_one_gallery_or_the_whole_tree_give_identical_embeddings(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    index(tmp_path, pack_dir, tree / "chunk1" / "a", caches="one")
    index(tmp_path, pack_dir, tree, caches="all")
    one, everything = load_cache(tmp_path / "one" / FACE_CACHE), load_cache(tmp_path / "all" / FACE_CACHE)
    by_hash = {r.content_hash: i for i, r in enumerate(everything.images)}
    for index_one, record in enumerate(one.images):
        rows_one = np.nonzero(one.meta["image"] == index_one)[0]
        rows_all = np.nonzero(everything.meta["image"] == by_hash[record.content_hash])[0]
        assert np.array_equal(one.embeddings[rows_one], everything.embeddings[rows_all])


def test_ml_purge_reindexes_from_scratch(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    first = index(tmp_path, pack_dir, tree)
    stats = index(tmp_path, pack_dir, tree / "chunk1", ml_purge=True)
    assert (
        stats["galleries_seen"],
        stats["galleries_skipped"],
        stats["files_read"],
        stats["files_embedded"],
        stats["files_deduped"],
    ) == (2, 0, 4, 3, 1)
    cache = load_cache(tmp_path / "caches" / FACE_CACHE)
    assert len(cache.images) == 5 and cache.face_count == first["faces_found"]


def test_other_model_is_refused(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    index(tmp_path, pack_dir, tree / "chunk1" / "a")
    with pytest.raises(ConfigError, match="embedding spaces never mix"):
        index(tmp_path, pack_dir, tree, face_model=NoFaces())


@pytest.mark.parametrize("problem", ["missing", "file"])
def test_bad_targets(tmp_path: Path, pack_dir: Path, problem: str) -> None:
    target = tmp_path / "x"
    if problem == "file":
        target.write_text("")
    with pytest.raises(ConfigError, match="does not exist" if problem == "missing" else "is a file"):
        index(tmp_path, pack_dir, target)


def test_empty_tree_and_odd_names(tmp_path: Path, pack_dir: Path, faces_dir: Path) -> None:
    root = tmp_path / "root"
    (root / "plain").mkdir(parents=True)
    (root / "plain" / "photo.jpg").write_bytes((faces_dir / "deepface" / "img1.jpg").read_bytes())
    with pytest.raises(ConfigError, match=r"no gallery found under .*facesets queue add"):
        index(tmp_path, pack_dir, root, clip_dir=tmp_path / "no-clip-model")  # said before any model is looked for
    assert not (tmp_path / "caches").exists()  # and nothing was written
    gallery = make_gallery(root / "g", {"ok.jpg": faces_dir / "deepface" / "img1.jpg"})
    (gallery / "empty.jpg").write_bytes(b"")
    os.close(os.open(os.fsencode(gallery) + b"/bad-\xff.jpg", os.O_CREAT | os.O_WRONLY))
    stats = index(tmp_path, pack_dir, root)
    assert (stats["files_stated"], stats["files_embedded"], stats["files_failed"]) == (2, 1, 1)
    assert stats["skip_reasons"] == {"file name is not valid UTF-8": 1}


def test_full_disk_keeps_previous_state_and_cache(
    tmp_path: Path, pack_dir: Path, tree: Path, monkeypatch: pytest.MonkeyPatch, faces_dir: Path
) -> None:
    index(tmp_path, pack_dir, tree)
    caches = tmp_path / "caches"
    before = (caches / FACE_CACHE).read_bytes()
    (tree / "chunk1" / "a" / "new.jpg").write_bytes((faces_dir / "deepface" / "img5.jpg").read_bytes())
    import facesets.artifacts.cache

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(facesets.artifacts.cache, "write_npz", full)
    with pytest.raises(CacheError, match=r"No space left on device.*intact"):
        index(tmp_path, pack_dir, tree)
    monkeypatch.undo()
    assert (caches / FACE_CACHE).read_bytes() == before
    again = index(tmp_path, pack_dir, tree)
    assert (again["files_read"], again["files_embedded"]) == (1, 1)


def test_backfill_fills_sizes_and_gallery_stats(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    index(tmp_path, pack_dir, tree)
    state = IndexState(tmp_path / "caches" / INDEX_STATE)
    state.begin()
    state._db.execute("UPDATE gallery_images SET file_size = NULL")
    state._db.execute("UPDATE galleries SET file_count = NULL, total_bytes = NULL")
    state.commit()
    state.close()
    stats = run_backfill([tree], tmp_path / "caches").as_dict()
    assert {k: stats[k] for k in ("galleries_seen", "galleries_filled", "file_sizes_filled", "files_stated")} == {
        "galleries_seen": 3,
        "galleries_filled": 3,
        "file_sizes_filled": 6,
        "files_stated": 6,
    }
    assert index(tmp_path, pack_dir, tree)["galleries_skipped"] == 3


def test_sigkill_then_resume(tmp_path: Path, pack_dir: Path, faces_dir: Path) -> None:
    root = tmp_path / "root"
    photos = sorted((faces_dir / "celeb5").rglob("*.jpg"))[:40]
    for number in range(4):
        make_gallery(
            root / f"g{number}", {f"{i}.jpg": p for i, p in enumerate(photos[number * 10 : (number + 1) * 10])}
        )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [
        sys.executable,
        "-m",
        "facesets",
        "index",
        "--target",
        str(root),
        "--model-dir",
        str(pack_dir),
        "--flush-every",
        "3",
        "--no-clip",
        "--concurrency",
        "2",
        "--json",
    ]
    subprocess.run([*base, "--caches", "ref"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    victim = subprocess.Popen(
        [*base, "--caches", "killed"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_segments(tmp_path / "killed" / FACE_CACHE, 4)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = subprocess.run([*base, "--caches", "killed"], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    stats = orjson.loads(resumed.stdout)
    assert 0 < stats["files_embedded"] < 40
    ref, killed = load_cache(tmp_path / "ref" / FACE_CACHE), load_cache(tmp_path / "killed" / FACE_CACHE)
    assert [r.path for r in killed.images] == [r.path for r in ref.images]
    assert np.allclose(killed.embeddings, ref.embeddings, atol=1e-5)
    for caches in ("ref", "killed"):
        state = IndexState(tmp_path / caches / INDEX_STATE)
        assert state.counts()["gallery_images"] == 40 and state.counts()["galleries_complete"] == 4
        state.close()


def test_clip_vectors_and_a_model_change_reembed_clip_only(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    from facesets.artifacts.clipstore import ClipStore
    from facesets.models.clip import clip_identity
    from tests import clipmodel

    model_a = clipmodel.build(tmp_path / "clip-a", seed=0)
    first = index(tmp_path, pack_dir, tree, clip_dir=model_a)
    assert (first["files_embedded"], first["files_deduped"], first["clip_embedded"]) == (5, 1, 5)
    store = ClipStore(tmp_path / "caches" / "clip.sqlite", clip_identity(model_a))
    vectors = dict(store.vectors())
    store.close()
    assert len(vectors) == 5 and all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-5 for v in vectors.values())
    again = index(tmp_path, pack_dir, tree, clip_dir=model_a)
    assert (again["galleries_skipped"], again["files_read"], again["clip_embedded"]) == (3, 0, 0)
    faces_before = (tmp_path / "caches" / FACE_CACHE).read_bytes()
    model_b = clipmodel.build(tmp_path / "clip-b", seed=1)
    changed = index(tmp_path, pack_dir, tree, clip_dir=model_b)
    assert counters(changed) == {
        "galleries_seen": 3,
        "galleries_skipped": 0,
        "files_stated": 6,
        "files_skipped_by_size": 0,
        "files_read": 6,
        "files_deduped": 6,
        "files_embedded": 0,
        "files_failed": 0,
        "files_removed": 0,
    }
    assert changed["clip_embedded"] == 5
    assert (tmp_path / "caches" / FACE_CACHE).read_bytes() == faces_before  # faces untouched
    store_b = ClipStore(tmp_path / "caches" / "clip.sqlite", clip_identity(model_b))
    assert store_b.count() == 5 and not np.allclose(
        dict(store_b.vectors())[next(iter(vectors))], vectors[next(iter(vectors))]
    )
    store_b.close()


def test_clip_added_after_a_faces_only_index(tmp_path: Path, pack_dir: Path, tree: Path) -> None:
    from tests import clipmodel

    index(tmp_path, pack_dir, tree)
    later = index(tmp_path, pack_dir, tree, clip_dir=clipmodel.build(tmp_path / "clip"))
    assert (later["galleries_skipped"], later["files_embedded"], later["files_deduped"], later["clip_embedded"]) == (
        0,
        0,
        6,
        5,
    )


def test_missing_clip_model_is_a_clear_error(
    tmp_path: Path, pack_dir: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facesets.base.errors import ModelPackError

    monkeypatch.setenv("FACESETS_CLIP_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ModelPackError, match="--no-clip skips CLIP embeddings"):
        index(tmp_path, pack_dir, tree, no_clip=False)
    assert not (tmp_path / "caches" / INDEX_STATE).exists()


def test_permission_denied_folder_is_a_counted_skip(tmp_path: Path, faces_dir: Path) -> None:
    """As root the walk runs with a dropped effective uid, so the folder really cannot be read."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="facesets-perm-"))
    base.chmod(0o777)
    try:
        root = base / "root"
        make_gallery(root / "open", {"1.jpg": faces_dir / "deepface" / "img1.jpg"})
        make_gallery(root / "closed", {"2.jpg": faces_dir / "deepface" / "img2.jpg"})
        for path in [root, *root.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        (root / "closed").chmod(0)
        caches = base / "caches"
        caches.mkdir(mode=0o777)
        caches.chmod(0o777)
        import codecs

        codecs.lookup("cp437")  # zipfile's codec, imported lazily: uid 65534 cannot read the interpreter's files
        if os.geteuid() == 0:
            os.setegid(65534)
            os.seteuid(65534)
        try:
            stats = run_index(IndexConfig(targets=(root,), caches=caches, no_clip=True), face_model=NoFaces()).as_dict()
        finally:
            if os.getuid() == 0:
                os.seteuid(0)
                os.setegid(0)
        assert (stats["galleries_seen"], stats["files_read"], stats["walk_skips"]) == (1, 1, 1)
        assert stats["skip_reasons"] == {"Permission denied": 1}
    finally:
        (base / "root" / "closed").chmod(0o755)
        import shutil

        shutil.rmtree(base)


def test_file_replaced_while_being_read(
    tmp_path: Path, pack_dir: Path, tree: Path, faces_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes actually read are what is recorded: their hash and their size, so the next run agrees."""
    import blake3

    from facesets.base.pipeline import read_image as real_read

    target = tree / "chunk1" / "a" / "2.jpg"
    replacement = (faces_dir / "deepface" / "img7.jpg").read_bytes()

    def replaced_during_read(path: str, max_bytes: int) -> bytes:
        if path == str(target):
            target.write_bytes(replacement)
        return real_read(path, max_bytes)

    monkeypatch.setattr("facesets.embed.stages.read_image", replaced_during_read)
    index(tmp_path, pack_dir, tree)
    monkeypatch.undo()
    state = IndexState(tmp_path / "caches" / INDEX_STATE)
    gallery = state.gallery(str(tree / "chunk1" / "a"))
    assert gallery is not None
    known = state.known_files(gallery.id)["2.jpg"]
    state.close()
    assert (known.image_hash, known.file_size) == (blake3.blake3(replacement).hexdigest(), len(replacement))
    assert index(tmp_path, pack_dir, tree)["files_read"] == 0


def test_a_reindex_of_known_files_needs_no_model_pack(
    tmp_path: Path, pack_dir: Path, tree: Path, faces_dir: Path
) -> None:
    first = index(tmp_path, pack_dir, tree)
    missing = tmp_path / "no-such-pack"
    again = index(tmp_path, missing, tree, reindex=True)
    assert again["files_read"] == first["files_read"] and again["files_embedded"] == 0
    make_gallery(tree / "chunk2" / "new", {"n.jpg": faces_dir / "deepface" / "img5.jpg"})
    with pytest.raises(ModelPackError, match="model pack folder not found"):
        index(tmp_path, missing, tree)
    assert index(tmp_path, pack_dir, tree)["files_embedded"] == 1  # the failed run recorded nothing of it


def test_a_fifo_or_device_in_a_gallery_is_a_counted_failure(tmp_path: Path, pack_dir: Path, faces_dir: Path) -> None:
    root = tmp_path / "root"
    gallery = make_gallery(root / "g", {"ok.jpg": faces_dir / "deepface" / "img1.jpg"})
    os.mkfifo(gallery / "photo.jpg")
    (gallery / "random.jpg").symlink_to("/dev/urandom")
    started = time.monotonic()
    stats = index(tmp_path, pack_dir, root)
    assert time.monotonic() - started < 60
    assert (stats["files_embedded"], stats["files_failed"]) == (1, 2)


def test_out_of_memory_in_index_is_retried_next_run(
    tmp_path: Path, pack_dir: Path, faces_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import facesets.models.decode as decode_module

    root = tmp_path / "root"
    photos = {"a.jpg": faces_dir / "deepface" / "img1.jpg", "b.jpg": faces_dir / "deepface" / "img2.jpg"}
    make_gallery(root / "g", photos)
    real, victim = decode_module._decode, photos["b.jpg"].read_bytes()

    def pressure(data: bytes, *args: object) -> object:
        if data == victim:
            raise MemoryError
        return real(data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(decode_module, "_decode", pressure)
    first = index(tmp_path, pack_dir, root)
    assert (first["files_embedded"], first["files_failed"]) == (1, 1)
    monkeypatch.setattr(decode_module, "_decode", real)
    second = index(tmp_path, pack_dir, root)  # not a permanent error: the gallery is read again, b.jpg embedded
    assert (second["galleries_skipped"], second["files_read"], second["files_embedded"]) == (0, 1, 1)
    assert index(tmp_path, pack_dir, root)["galleries_skipped"] == 1


def test_a_damaged_or_empty_index_state_is_a_message(
    tmp_path: Path, pack_dir: Path, tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from facesets.cli import main

    index(tmp_path, pack_dir, tree)
    capsys.readouterr()  # the first index's warnings about the tree
    state = tmp_path / "caches" / INDEX_STATE
    data = bytearray(state.read_bytes())
    assert len(data) >= 4 * 4096
    data[2 * 4096 : len(data) - 4096] = os.urandom(len(data) - 3 * 4096)  # every page but the first and last
    state.write_bytes(bytes(data))
    args = ["index", "--target", str(tree), "--caches", str(tmp_path / "caches"), "--model-dir", str(pack_dir)]
    assert main([*args, "--no-clip", "--reindex"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "index.sqlite" in err and ("damaged" in err or "not a usable" in err)
    assert "Traceback" not in err
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / INDEX_STATE).write_bytes(b"")
    assert main([*args[:-4], "--caches", str(fresh), "--model-dir", str(pack_dir), "--no-clip"]) == 0
    assert "is empty (not an index state): starting a new one" in capsys.readouterr().err
