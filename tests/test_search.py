"""facesets search / similar against a real embedded PostgreSQL, with a tiny CLIP model in Immich's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest
from pgvector.psycopg import register_vector
from PIL import Image

from facesets.cli import main
from facesets.models.clip import clip_identity
from facesets.store.database import connect
from facesets.store.migrations import migrate
from tests import clipmodel

QUERY = "a red bicycle on the beach"


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    folder = clipmodel.build(tmp_path / "ViT-tiny")
    return clipmodel.build_text(folder)


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def plant(database: str, clip: Path, planted: dict[str, np.ndarray], noise: int = 300) -> None:
    """The clip model, ``planted`` images with their vectors, and ``noise`` random ones; each image has a path."""
    rng = np.random.default_rng(11)
    rows = dict(planted)
    rows.update({f"noise{i:04d}": unit(rng.normal(size=512)) for i in range(noise)})
    with connect(database) as conn:
        migrate(conn)
        register_vector(conn)
        identity = clip_identity(clip)
        conn.execute(
            "INSERT INTO models(purpose, identity) VALUES ('clip', %s)",
            (orjson.dumps({"name": identity.name, "visual_blake3": identity.visual_blake3}).decode(),),
        )
        for image, vector in rows.items():
            conn.execute("INSERT INTO images(id, size) VALUES (%s, 1)", (image,))
            conn.execute("INSERT INTO image_paths(path, image_id) VALUES (%s, %s)", (f"/photos/{image}.jpg", image))
            conn.execute("INSERT INTO clip_embeddings VALUES (%s, 'ViT-tiny', %s)", (image, vector))


def near(vector: np.ndarray, similarity: float, seed: int) -> np.ndarray:
    """A unit vector with the given cosine similarity to ``vector``."""
    other = np.random.default_rng(seed).normal(size=512)
    other -= other @ vector * vector
    return unit(similarity * vector + np.sqrt(1 - similarity**2) * unit(other))


def hits(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    return list(orjson.loads(capsys.readouterr().out))


def test_search_returns_the_planted_nearest_images(
    database: str, clip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    query = clipmodel.reference_text_vector(QUERY)
    plant(database, clip, {"best": near(query, 0.9, 1), "second": near(query, 0.8, 2), "third": near(query, 0.7, 3)})
    found = hits(capsys, ["search", QUERY, "--database", database, "--clip-dir", str(clip), "--limit", "3", "--json"])
    assert [hit["image"] for hit in found] == ["best", "second", "third"]
    assert [hit["score"] for hit in found] == pytest.approx([0.9, 0.8, 0.7], abs=1e-3)
    assert found[0]["paths"] == ["/photos/best.jpg"] and found[0]["immich_assets"] == []
    many = hits(capsys, ["search", QUERY, "--database", database, "--clip-dir", str(clip), "--limit", "120", "--json"])
    assert len(many) == 120  # more than pgvector's default ef_search of 40
    capsys.readouterr()
    assert main(["search", QUERY, "--database", database, "--clip-dir", str(clip), "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0.9000  /photos/best.jpg", "0.8000  /photos/second.jpg"]


def test_search_of_one_person(database: str, clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = clipmodel.reference_text_vector(QUERY)
    plant(database, clip, {"best": near(query, 0.9, 1), "second": near(query, 0.8, 2), "third": near(query, 0.7, 3)})
    with psycopg.connect(database, autocommit=True) as conn:
        register_vector(conn)
        person = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO person_names VALUES (%s, 'Ann')", (person,))
        for image in ("third", "noise0007"):
            face = conn.execute(
                "INSERT INTO face_detections(image_id, box, keypoints, score, face_short, model, embedding) "
                "VALUES (%s, '{0,0,10,10}', '{}', 0.9, 10, 'pack', %s) RETURNING id",
                (image, unit(np.ones(512))),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO face_persons VALUES (%s, %s, 'manual')", (face, person))
    argv = ["search", QUERY, "--person", "ann", "--database", database, "--clip-dir", str(clip), "--json"]
    assert [hit["image"] for hit in hits(capsys, argv)] == ["third", "noise0007"]


def test_similar_uses_the_stored_vector_or_embeds_a_new_image(
    database: str, clip: Path, tmp_path: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "query.jpg"
    with Image.open(faces_dir / "deepface" / "img1.jpg") as image:
        image.convert("RGB").save(photo, quality=95)
        vector = clipmodel.reference_vector(Image.open(photo).convert("RGB"))
    plant(database, clip, {"twin": vector, "close": near(vector, 0.8, 5)})
    found = hits(capsys, ["similar", str(photo), "--database", database, "--clip-dir", str(clip), "--json"])
    assert [hit["image"] for hit in found[:2]] == ["twin", "close"]
    assert found[0]["score"] == pytest.approx(1.0, abs=1e-3)
    argv = ["similar", str(tmp_path / "missing.jpg"), "--database", database, "--clip-dir", str(clip)]
    assert main(argv) == 2  # click: the file must exist


def test_a_text_tower_of_another_model_is_refused(
    database: str, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plant(database, clip, {}, noise=3)
    other = clipmodel.build_text(clipmodel.build(tmp_path / "other" / "ViT-tiny", seed=1))
    capsys.readouterr()
    assert main(["search", QUERY, "--database", database, "--clip-dir", str(other)]) == 1
    assert "embedding spaces never mix" in capsys.readouterr().err
    visual_only = clipmodel.build(tmp_path / "bare" / "ViT-tiny")
    (visual_only / "visual" / "model.onnx").write_bytes((clip / "visual" / "model.onnx").read_bytes())
    assert main(["search", QUERY, "--database", database, "--clip-dir", str(visual_only)]) == 1
    assert "needs the CLIP model's text tower" in capsys.readouterr().err


def test_search_on_a_store_without_clip_vectors_says_how_to_add_them(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with connect(database) as conn:
        migrate(conn)
    assert main(["search", "a dog", "--database", database]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the database holds no CLIP vectors") and "facesets load" in err
    assert "--no-clip" not in err
