"""facesets load against a real embedded PostgreSQL, from caches made by a real index run."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesets.artifacts.cache import CacheWriter, load_cache
from facesets.artifacts.layout import FACE_CACHE
from facesets.artifacts.records import ImageRecord, ImageStatus, Source, SourceKind
from facesets.base.errors import DatabaseError
from facesets.embed.index import IndexConfig, run_index
from facesets.models.packs import PackIdentity
from facesets.store.database import DatabaseConfig, connect
from facesets.store.load import LoadConfig, run_load
from facesets.store.migrations import migrate
from tests import clipmodel
from tests.conftest import REPO
from tests.test_index import make_gallery


@pytest.fixture
def indexed(tmp_path: Path, pack_dir: Path, faces_dir: Path) -> tuple[Path, Path]:
    """Caches of a real index run (faces + tiny CLIP) over 2 galleries, 4 files, 3 distinct contents."""
    deepface = faces_dir / "deepface"
    root = tmp_path / "root"
    make_gallery(root / "a", {"1.jpg": deepface / "img1.jpg", "2.jpg": deepface / "img2.jpg"})
    make_gallery(root / "b", {"3.jpg": deepface / "img3.jpg", "copy.jpg": deepface / "img1.jpg"})
    clip = clipmodel.build(tmp_path / "clip")
    caches = tmp_path / "caches"
    run_index(IndexConfig(targets=(root,), caches=caches, model_dir=pack_dir, clip_dir=clip))
    return root, caches


def migrated(database: str) -> DatabaseConfig:
    with connect(database) as conn:
        migrate(conn)
    return DatabaseConfig(database)


def counts(database: str) -> dict[str, int]:
    with psycopg.connect(database) as conn:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
            for table in ("images", "image_paths", "face_detections", "galleries", "gallery_images", "clip_embeddings")
        }


def test_load_then_load_again_changes_nothing(database: str, indexed: tuple[Path, Path]) -> None:
    _, caches = indexed
    config = LoadConfig(migrated(database), caches)
    first = run_load(config)
    loaded = counts(database)
    assert loaded["images"] == 3 and loaded["image_paths"] == 3 and loaded["galleries"] == 2
    assert loaded["gallery_images"] == 4 and loaded["clip_embeddings"] == 3
    assert loaded["face_detections"] == first.faces_added == first.faces_seen >= 3
    second = run_load(config).as_dict()
    assert {
        k: second[k] for k in ("images_added", "paths_added", "faces_added", "gallery_images_loaded", "clip_added")
    } == dict.fromkeys(("images_added", "paths_added", "faces_added", "gallery_images_loaded", "clip_added"), 0)
    assert counts(database) == loaded
    assert first.indexes_rebuilt == 2 and second["indexes_rebuilt"] == 0
    with psycopg.connect(database) as conn:
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    assert {"face_detections_embedding", "clip_embeddings_embedding"} <= names
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT embedding::text FROM face_detections LIMIT 1").fetchone()
        assert row is not None
        vector = row[0]
        assert abs(float(np.linalg.norm(np.array(vector.strip("[]").split(","), float))) - 1.0) < 1e-5
        stored = sorted(float(r[0]) for r in conn.execute("SELECT norm FROM face_detections"))
    cached = load_cache(caches / FACE_CACHE).meta["norm"]
    assert np.isfinite(cached).all()
    assert np.array_equal(np.array(stored, np.float32), np.sort(cached))  # each face's quality, as the cache has it


def test_a_newer_cache_adds_only_what_is_new(
    database: str, indexed: tuple[Path, Path], pack_dir: Path, faces_dir: Path, tmp_path: Path
) -> None:
    root, caches = indexed
    config = LoadConfig(migrated(database), caches)
    run_load(config)
    before = counts(database)
    (root / "a" / "new.jpg").write_bytes((faces_dir / "deepface" / "img5.jpg").read_bytes())
    run_index(IndexConfig(targets=(root,), caches=caches, model_dir=pack_dir, clip_dir=tmp_path / "clip"))
    added = run_load(config).as_dict()
    assert (added["images_added"], added["paths_added"], added["gallery_images_loaded"], added["clip_added"]) == (
        1,
        1,
        1,
        1,
    )
    after = counts(database)
    assert after["images"] == before["images"] + 1 and after["face_detections"] > before["face_detections"]


def test_vectors_of_another_model_are_refused(database: str, indexed: tuple[Path, Path], tmp_path: Path) -> None:
    _, caches = indexed
    config = migrated(database)
    run_load(LoadConfig(config, caches))
    other = PackIdentity("other", "det.onnx", "d" * 64, "rec.onnx", "r" * 64)
    writer = CacheWriter(tmp_path / "other.npz", other)
    writer.add(ImageRecord("/x.jpg", "f" * 64, 10, ImageStatus.NO_FACE), [])
    writer.close()
    before = counts(database)
    with pytest.raises(DatabaseError, match="embedding spaces never mix"):
        run_load(LoadConfig(config, tmp_path / "empty", (tmp_path / "other.npz",)))
    assert counts(database) == before


def test_a_failed_batch_leaves_no_partial_batch(
    database: str, indexed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import facesets.store.load

    _, caches = indexed
    config = LoadConfig(migrated(database), caches, batch=1, workers=1)
    real = facesets.store.load._insert_faces
    calls = []

    def fails_on_the_second_batch(*args: object) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(facesets.store.load, "_insert_faces", fails_on_the_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        run_load(config)
    partial = counts(database)
    assert partial["images"] == 1 and partial["image_paths"] == 1  # the first batch only, whole
    assert bulk_constraints(database) == BULK  # a failed bulk load still adds back what it left out
    monkeypatch.undo()
    run_load(config)
    assert counts(database)["images"] == 3


BULK = {
    "face_detections_image_id_fkey",
    "face_detections_image_id_model_box_key",
    "image_paths_image_id_fkey",
    "image_paths_by_image",
}


def bulk_constraints(database: str) -> set[str]:
    with psycopg.connect(database) as conn:
        names = {r[0] for r in conn.execute("SELECT conname FROM pg_constraint")}
        names |= {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    return names & BULK


def test_a_bulk_load_adds_back_its_constraints_and_they_hold(database: str, indexed: tuple[Path, Path]) -> None:
    _, caches = indexed
    run_load(LoadConfig(migrated(database), caches))
    assert bulk_constraints(database) == BULK
    with psycopg.connect(database) as conn:
        columns = "image_id, box, keypoints, score, face_short, model, embedding"
        copy = f"INSERT INTO face_detections({columns}) SELECT %s, box, keypoints, score, face_short, model, embedding "
        copy += "FROM face_detections LIMIT 1"
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(copy, ("0" * 64,))
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(copy.replace("%s", "image_id"))
        conn.rollback()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO image_paths VALUES ('/nowhere.jpg', %s)", ("0" * 64,))


def test_a_killed_bulk_load_is_made_whole_by_the_next_load(database: str, indexed: tuple[Path, Path]) -> None:
    import facesets.store.load

    _, caches = indexed
    config = migrated(database)
    with connect(database) as conn:
        assert facesets.store.load._start_bulk(conn)  # as a bulk load killed before its end leaves the store
    assert bulk_constraints(database) == set()
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO images VALUES (%s, 1)", ("a" * 64,))  # rows its first batches wrote
        conn.execute("INSERT INTO image_paths VALUES ('/a.jpg', %s)", ("a" * 64,))
    stats = run_load(LoadConfig(config, caches))
    assert bulk_constraints(database) == BULK
    assert stats.faces_added == counts(database)["face_detections"] >= 3  # not a bulk load: the store was not empty


def test_two_loads_at_once(database: str, indexed: tuple[Path, Path]) -> None:
    _, caches = indexed
    migrated(database)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "facesets", "load", "--database", database, "--caches", str(caches), "--json"]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    loaded = counts(database)
    assert (loaded["images"], loaded["gallery_images"], loaded["clip_embeddings"]) == (3, 4, 3)


def test_load_needs_a_migrated_database(database: str, indexed: tuple[Path, Path]) -> None:
    _, caches = indexed
    with pytest.raises(DatabaseError, match="run `facesets migrate` first"):
        run_load(LoadConfig(DatabaseConfig(database), caches))


def test_immich_assets_are_loaded_from_the_queue_source(database: str, tmp_path: Path) -> None:
    config = migrated(database)
    identity = PackIdentity("pack", "det.onnx", "d" * 64, "rec.onnx", "r" * 64)
    asset, owner = "1b4e28ba-2fa1-41d2-883f-0016d3cca427", "6a0f2f0a-1111-4c4c-9c9c-0123456789ab"
    source = Source(SourceKind.IMMICH, "", "peter", asset, owner, "qZk+NkcGgWq6Pi")
    writer = CacheWriter(tmp_path / "peter.npz", identity)
    writer.add(ImageRecord("/staging/peter/a.jpg", "a" * 64, 10, ImageStatus.NO_FACE, source=source), [])
    bad = dataclasses.replace(source, asset_id="../not-a-uuid")
    writer.add(ImageRecord("/staging/peter/b.jpg", "b" * 64, 10, ImageStatus.NO_FACE, source=bad), [])
    writer.close()
    first = run_load(LoadConfig(config, tmp_path / "empty", (tmp_path / "peter.npz",)))
    again = run_load(LoadConfig(config, tmp_path / "empty", (tmp_path / "peter.npz",)))
    assert (first.immich_assets_added, again.immich_assets_added) == (1, 0)
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT asset_id::text, owner_id::text, checksum, image_id, user_label FROM immich_assets")
        assert rows.fetchall() == [(asset, owner, "qZk+NkcGgWq6Pi", "a" * 64, "peter")]


def test_copies_and_renamed_content_load_once_each(database: str, tmp_path: Path) -> None:
    """Photo rows go once, with their first record; a path named twice points at its newest content."""
    config = migrated(database)
    identity = PackIdentity("pack", "det.onnx", "d" * 64, "rec.onnx", "r" * 64)
    writer = CacheWriter(tmp_path / "faces.npz", identity)
    for path, content in [("/p/x.jpg", "a"), ("/p/y.jpg", "b"), ("/p/copy.jpg", "a"), ("/p/x.jpg", "c")]:
        writer.add(ImageRecord(path, content * 64, 10, ImageStatus.NO_FACE), [])
    writer.close()
    stats = run_load(LoadConfig(config, tmp_path / "empty", (tmp_path / "faces.npz",), batch=1, workers=2))
    assert (stats.images_added, stats.paths_added) == (3, 3)
    with psycopg.connect(database) as conn:
        paths: dict[str, str] = dict(conn.execute("SELECT path, left(image_id, 1) FROM image_paths").fetchall())
    assert paths == {"/p/x.jpg": "c", "/p/y.jpg": "b", "/p/copy.jpg": "a"}
    assert bulk_constraints(database) == BULK
