from pathlib import Path

import numpy as np
import pytest

from facesets.artifacts.cache import (
    FIRST_META_DTYPE,
    META_DTYPE,
    CacheData,
    CacheWriter,
    journal_dir,
    journal_segments,
    load_cache,
    write_npz,
)
from facesets.artifacts.cacheops import cache_summary, extend_cache
from facesets.artifacts.records import ImageRecord, ImageStatus
from facesets.base.errors import CacheCorruptError, CacheModelMismatchError, CacheVersionError, FacesetsError
from facesets.models.faces import Face
from facesets.models.packs import PackIdentity

IDENTITY = PackIdentity("p", "det.onnx", "d" * 64, "rec.onnx", "r" * 64)
OTHER = PackIdentity("q", "det.onnx", "d" * 64, "rec2.onnx", "s" * 64)


def face(seed: int) -> Face:
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=512).astype(np.float32)
    return Face(
        np.array([1, 2, 30, 40], np.float32),
        rng.random((5, 2)).astype(np.float32),
        0.9,
        28.0,
        vector / np.linalg.norm(vector),
        float(np.linalg.norm(vector)),
        100.0 + seed,
    )


def record(path: str, digest: str, faces: int = 1, status: ImageStatus = ImageStatus.OK) -> ImageRecord:
    return ImageRecord(path, digest, 100, status, "", 64, 48, faces)


def write_cache(path: Path, items: list[tuple[str, str, int]], identity: PackIdentity = IDENTITY) -> None:
    writer = CacheWriter(path, identity)
    for name, digest, count in items:
        status = ImageStatus.OK if count else ImageStatus.NO_FACE
        writer.add(
            record(name, digest, count, status),
            [face(hash(name) % 1000 + i) for i in range(count)],
            {name: "X:\\" + name.strip("/")},
        )
    writer.close()


def test_writer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    write_cache(path, [("/b.jpg", "h2", 2), ("/a.jpg", "h1", 1), ("/n.jpg", "h3", 0)])
    data = load_cache(path)
    assert [r.path for r in data.images] == ["/a.jpg", "/b.jpg", "/n.jpg"]  # canonical path order
    assert data.face_count == 3 and data.embeddings.shape == (3, 512)
    assert [int(i) for i in data.meta["image"]] == [0, 1, 1]
    assert np.allclose(data.embeddings[0], face(hash("/a.jpg") % 1000).embedding)
    assert data.aliases["/a.jpg"] == "X:\\a.jpg"
    assert not journal_dir(path).exists()
    with np.load(path, allow_pickle=False) as npz:
        assert int(npz["schema"]) == 2
        assert set(npz.files) >= {"embeddings", "meta", "processed", "path_aliases", "schema", "model"}


def test_face_quality_is_kept_and_a_cache_from_before_it_reads_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    write_cache(path, [("/a.jpg", "h1", 2)])
    data = load_cache(path)
    expected = [face(hash("/a.jpg") % 1000 + i) for i in range(2)]
    assert data.meta.dtype == META_DTYPE
    assert data.meta["norm"].tolist() == pytest.approx([one.norm for one in expected])
    assert data.meta["sharpness"].tolist() == [one.sharpness for one in expected]
    old = np.zeros(len(data.meta), FIRST_META_DTYPE)
    for name in FIRST_META_DTYPE.names or ():
        old[name] = data.meta[name]
    with np.load(path, allow_pickle=False) as npz:
        members = {name: npz[name] for name in npz.files}
    members["meta"] = old
    legacy = tmp_path / "legacy.npz"
    np.savez(legacy, **members)
    upgraded = load_cache(legacy)
    assert upgraded.meta.dtype == META_DTYPE
    assert np.isnan(upgraded.meta["norm"]).all() and np.isnan(upgraded.meta["sharpness"]).all()
    assert upgraded.meta["bbox"].tolist() == data.meta["bbox"].tolist()
    assert np.array_equal(upgraded.embeddings, data.embeddings)


def test_flush_writes_journal_segments_that_readers_fold_in(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    writer = CacheWriter(path, IDENTITY)
    writer.add(record("/a.jpg", "h1"), [face(1)])
    writer.flush()
    writer.add(record("/b.jpg", "h2"), [face(2)])
    writer.flush()
    assert [n for n, _ in journal_segments(path)] == [1, 2]
    assert not path.exists()
    assert [r.path for r in load_cache(path).images] == ["/a.jpg", "/b.jpg"]
    writer.abandon()  # as if killed: the next writer resumes from the journal
    resumed = CacheWriter(path, IDENTITY)
    assert {r.path for r in resumed.done_images()} == {"/a.jpg", "/b.jpg"}
    resumed.add(record("/c.jpg", "h3"), [face(3)])
    resumed.close()
    data = load_cache(path)
    assert [r.path for r in data.images] == ["/a.jpg", "/b.jpg", "/c.jpg"]
    assert journal_segments(path) == []


def test_segments_already_folded_are_not_counted_twice(tmp_path: Path) -> None:
    """A kill between writing the main file and removing the segments leaves stale segments behind."""
    path = tmp_path / "c.npz"
    writer = CacheWriter(path, IDENTITY)
    writer.add(record("/a.jpg", "h1"), [face(1)])
    writer.flush()
    stale = journal_segments(path)[0][1].read_bytes()
    writer.close()
    journal_dir(path).mkdir()
    (journal_dir(path) / "seg-000001.npz").write_bytes(stale)
    assert len(load_cache(path).images) == 1
    again = CacheWriter(path, IDENTITY)
    assert journal_segments(path) == []
    again.close()
    assert len(load_cache(path).images) == 1


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    first = CacheWriter(path, IDENTITY)
    with pytest.raises(FacesetsError, match="locked by another facesets process"):
        CacheWriter(path, IDENTITY)
    first.close()


def test_other_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    write_cache(path, [("/a.jpg", "h1", 1)])
    before = path.read_bytes()
    with pytest.raises(
        CacheModelMismatchError,
        match=r"made with model pack p \(rec.onnx rrrrrrrrrrrr\), but this run "
        r"uses q \(rec2.onnx ssssssssssss\): embeddings of different recognizers never mix",
    ):
        CacheWriter(path, OTHER)
    assert path.read_bytes() == before


def test_another_pack_with_the_same_recognizer_shares_the_cache(tmp_path: Path) -> None:
    master, other = tmp_path / "master.npz", tmp_path / "other.npz"
    write_cache(master, [("/a.jpg", "h1", 1)])
    same_space = PackIdentity("p2", "det2.onnx", "e" * 64, "rec.onnx", "r" * 64)
    write_cache(other, [("/b.jpg", "h2", 1)], identity=same_space)
    extend_cache(master, [other])
    assert [r.path for r in load_cache(master).images] == ["/a.jpg", "/b.jpg"]


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04broken zip"])
def test_corrupt_cache_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(content)
    with pytest.raises(CacheCorruptError, match=r"is not a (readable facesets|face) cache.*left untouched"):
        CacheWriter(path, IDENTITY)
    assert path.read_bytes() == content


def test_pickled_cache_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "old.npz"
    np.savez(
        path,
        embeddings=np.zeros((1, 512), np.float32),
        meta=np.array([{"path": "/a"}], dtype=object),
        processed=np.zeros(1),
        path_aliases=np.zeros(1),
        schema=np.int64(2),
        model=np.zeros(1),
    )
    with pytest.raises(CacheCorruptError, match="pickled objects"):
        load_cache(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    write_cache(path, [("/a.jpg", "h1", 1)])
    with np.load(path, allow_pickle=False) as npz:
        members = {name: npz[name] for name in npz.files}
    members["schema"] = np.int64(3)
    np.savez(path, **members)
    with pytest.raises(CacheVersionError, match="newer than this facesets reads"):
        load_cache(path)


def test_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.npz"
    write_cache(path, [("/a.jpg", "h1", 1)])
    before = path.read_bytes()

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_npz(path, CacheData(IDENTITY))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_extend_dedups_by_hash_and_merges_aliases(tmp_path: Path) -> None:
    master, peter, nic = tmp_path / "master.npz", tmp_path / "peter.npz", tmp_path / "nic.npz"
    write_cache(master, [("/m/a.jpg", "h1", 1)])
    write_cache(peter, [("/p/a-copy.jpg", "h1", 1), ("/p/b.jpg", "h2", 2), ("/m/a.jpg", "h1", 1)])
    write_cache(nic, [("/n/c.jpg", "h3", 0), ("/n/b.jpg", "h2", 2)])
    stats = extend_cache(master, [peter, nic])
    assert stats.as_dict() == {"images_added": 4, "faces_added": 2, "deduplicated": 2, "already_present": 1}
    data = load_cache(master)
    statuses = {r.path: r.status.value for r in data.images}
    assert statuses == {
        "/m/a.jpg": "ok",
        "/p/a-copy.jpg": "duplicate",
        "/p/b.jpg": "ok",
        "/n/c.jpg": "no_face",
        "/n/b.jpg": "duplicate",
    }
    assert data.face_count == 3
    assert data.images[int(data.meta["image"][-1])].path == "/p/b.jpg"
    assert data.aliases["/p/b.jpg"] == "X:\\p/b.jpg"
    assert extend_cache(master, [peter]).as_dict()["images_added"] == 0


def test_extend_refuses_other_models(tmp_path: Path) -> None:
    master, other = tmp_path / "master.npz", tmp_path / "other.npz"
    write_cache(master, [("/a.jpg", "h1", 1)])
    write_cache(other, [("/b.jpg", "h2", 1)], identity=OTHER)
    before = master.read_bytes()
    with pytest.raises(CacheModelMismatchError):
        extend_cache(master, [other])
    assert master.read_bytes() == before


def test_summary(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    writer = CacheWriter(path, IDENTITY)
    writer.add(record("/a.jpg", "h1", 2), [face(1), face(2)])
    writer.add(record("/b.jpg", "h2", 0, ImageStatus.NO_FACE), [])
    writer.add(ImageRecord("/c.jpg", "", 0, ImageStatus.ERROR, "empty file (0 bytes)"), [])
    writer.add(record("/d.jpg", "h1", 0, ImageStatus.DUPLICATE), [])
    writer.flush()
    summary = cache_summary(path)
    assert summary["pending_journal_segments"] == 1
    writer.close()
    summary = cache_summary(path)
    assert {k: summary[k] for k in ("images", "faces", "with_faces", "no_face", "duplicates", "errors", "schema")} == {
        "images": 4,
        "faces": 2,
        "with_faces": 1,
        "no_face": 1,
        "duplicates": 1,
        "errors": 1,
        "schema": 2,
    }
    assert summary["model"]["name"] == "p" and summary["pending_journal_segments"] == 0


def test_extend_removes_what_a_killed_extend_left(tmp_path: Path) -> None:
    master, part = tmp_path / "master.npz", tmp_path / "part.npz"
    write_cache(part, [("/a.jpg", "h1", 1)])
    left = tmp_path / ".master.npz.abcd1234.tmp"
    left.write_bytes(b"x" * 1000)  # a killed extend's partial master
    extend_cache(master, [part])
    assert not left.exists() and len(load_cache(master).images) == 1
