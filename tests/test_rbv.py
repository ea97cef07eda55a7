"""The original ``rbv`` workflow as its README teaches it, against the real embedded PostgreSQL:

    facesets migrate --database "$DATABASE_URL"
    facesets index --target /mnt/galleries --database "$DATABASE_URL" --model-dir /path/to/models
    facesets cluster --database "$DATABASE_URL"
    facesets backfill --target /mnt/galleries --database "$DATABASE_URL"

then index and cluster again on a tree that gained a gallery.
"""

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from facesets.cli import main
from tests.test_index import COUNTERS, make_gallery


def run(capsys: pytest.CaptureFixture[str], *args: object) -> dict:
    capsys.readouterr()
    assert main([str(arg) for arg in args]) == 0
    return json.loads(capsys.readouterr().out)


def query(database: str, sql: str) -> list[tuple]:
    with psycopg.connect(database) as conn:
        return conn.execute(sql).fetchall()


def test_the_rbv_workflow_then_a_new_gallery(
    database: str, tmp_path: Path, pack_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    celeb = faces_dir / "celeb5"
    root, caches = tmp_path / "galleries", tmp_path / "caches"
    madonna = sorted((celeb / "madonna").iterdir())[:4]
    elton = sorted((celeb / "elton_john").iterdir())[:4]
    make_gallery(root / "a", {f"m{i}.jpg": path for i, path in enumerate(madonna)})
    make_gallery(root / "b", {f"e{i}.jpg": path for i, path in enumerate(elton)})
    index_args = ("index", "--target", root, "--database", database, "--model-dir", pack_dir, "--caches", caches)

    assert main(["migrate", "--database", database]) == 0
    first = run(capsys, *index_args, "--no-clip", "--json")
    assert first["files_embedded"] == 8 and first["faces_found"] >= 8
    assert first["database"]["images_added"] == 8
    assert first["database"]["faces_added"] == first["faces_found"]
    assert first["database"]["galleries_loaded"] == 2
    galleries = query(database, "SELECT path, file_count, total_bytes FROM galleries ORDER BY path")
    assert [(Path(path).name, count) for path, count, _ in galleries] == [("a", 4), ("b", 4)]
    assert sum(total for _, _, total in galleries) == sum(path.stat().st_size for path in [*madonna, *elton])
    rows = query(database, "SELECT filename, file_size FROM gallery_images ORDER BY filename")
    assert len(rows) == 8 and all(size is not None and size > 0 for _, size in rows)

    clustered = run(capsys, "cluster", "--database", database, "--json")
    assert clustered["new_persons"] >= 1 and clustered["faces"] == first["faces_found"]
    persons = query(database, "SELECT count(DISTINCT person_id) FROM face_persons")
    assert persons[0][0] == clustered["new_persons"]

    # sizes and stats missing in the database (an old rbv store): backfill fills them from the disk
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE gallery_images SET file_size = NULL")
        conn.execute("UPDATE galleries SET file_count = NULL, total_bytes = NULL")
    filled = run(capsys, "backfill", "--target", root, "--database", database, "--caches", caches, "--json")
    assert filled["database"]["gallery_images_loaded"] == 8
    assert query(database, "SELECT count(*) FROM gallery_images WHERE file_size IS NULL")[0][0] == 0
    assert query(database, "SELECT count(*) FROM galleries WHERE file_count IS NULL")[0][0] == 0

    # a new gallery: only it is read and loaded; the counters are those of a run without --database
    jerry = sorted((celeb / "jerry_seinfeld").iterdir())[:3]
    make_gallery(root / "c", {f"j{i}.jpg": path for i, path in enumerate(jerry)})
    shutil.copytree(caches, tmp_path / "plain")
    again = run(capsys, *index_args, "--no-clip", "--json")
    plain = run(
        capsys,
        "index",
        "--target",
        root,
        "--model-dir",
        pack_dir,
        "--caches",
        tmp_path / "plain",
        "--no-clip",
        "--json",
    )
    assert {key: again[key] for key in COUNTERS} == {key: plain[key] for key in COUNTERS}
    assert (again["galleries_skipped"], again["files_embedded"]) == (2, 3)
    assert again["database"]["images_added"] == 3 and again["database"]["faces_added"] == again["faces_found"]
    assert query(database, "SELECT count(*) FROM images")[0][0] == 11
    second = run(capsys, "cluster", "--database", database, "--json")
    # the faces with no person: the new gallery's and those the first run left unassigned
    assert second["considered"] == again["faces_found"] + clustered["left_unassigned"]
    assert query(database, "SELECT count(*) FROM galleries")[0][0] == 3


def test_index_refuses_a_database_without_the_schema_before_any_work(
    database: str, tmp_path: Path, pack_dir: Path, faces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_gallery(tmp_path / "g" / "a", {"1.jpg": faces_dir / "deepface" / "img1.jpg"})
    args = ["index", "--target", str(tmp_path / "g"), "--database", database, "--caches", str(tmp_path / "caches")]
    assert main([*args, "--model-dir", str(pack_dir)]) == 1
    assert "facesets migrate" in capsys.readouterr().err
    assert not (tmp_path / "caches").exists()


@pytest.mark.parametrize("url", ["notaurl", "mysql://user@host/db"])
def test_a_database_option_that_is_not_a_postgresql_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --database") and "postgresql://user@host:5432/dbname" in err
    assert "Traceback" not in err
