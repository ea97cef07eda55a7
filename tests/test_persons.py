"""Person clustering in the database and `facesets persons`, on real faces in a real embedded PostgreSQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesets.base.errors import ConfigError, PersonError
from facesets.cli import main
from facesets.cluster.algorithms import Algorithm
from facesets.cluster.identify import ClusterConfig, run_cluster
from facesets.cluster.thresholds import Thresholds
from facesets.export.sets import ExportConfig, run_export
from facesets.store.database import DatabaseConfig, connect
from facesets.store.load import LoadConfig, run_load
from facesets.store.migrations import migrate
from facesets.store.personops import merge_persons, name_person, not_person, reset_persons, resolve_person
from facesets.store.persons import FaceRows, PersonClusterConfig, plan_persons, run_person_cluster
from tests.test_export import PEOPLE, PHOTOS, _cache, _library


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, pack_dir: Path) -> Path:
    root = _library(faces_dir, tmp_path_factory.mktemp("lib") / "photos", PEOPLE)
    return _cache(root, pack_dir, "faces")


def loaded(database: str, cache: Path, tmp_path: Path, sets: Path | None = None) -> DatabaseConfig:
    with connect(database) as conn:
        migrate(conn)
    config = DatabaseConfig(database)
    run_load(LoadConfig(config, tmp_path / "no-caches", (cache,), sets=sets))
    return config


def people_of(database: str) -> dict[int, list[str]]:
    """Person id -> the folder (real identity) of each of its faces' photos."""
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT a.person_id, p.path FROM face_persons a JOIN face_detections f ON f.id = a.face_id "
            "JOIN image_paths p ON p.image_id = f.image_id ORDER BY a.person_id, p.path"
        ).fetchall()
    found: dict[int, list[str]] = {}
    for person, path in rows:
        found.setdefault(int(person), []).append(Path(path).parent.name)
    return found


def person_of(database: str, face: int) -> int | None:
    """The person face ``face`` is in, or None."""
    with psycopg.connect(database) as conn:
        row = conn.execute("SELECT person_id FROM face_persons WHERE face_id = %s", (face,)).fetchone()
    return None if row is None else int(row[0])


def face_ids_of(database: str, who: str) -> list[int]:
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT f.id FROM face_detections f JOIN image_paths p ON p.image_id = f.image_id "
            "WHERE p.path LIKE %s ORDER BY f.id",
            (f"%/{who}/%",),
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_clustering_makes_one_person_per_identity(database: str, library: Path, tmp_path: Path) -> None:
    config = loaded(database, library, tmp_path)
    stats = run_person_cluster(PersonClusterConfig(config))
    # 19 faces: one photo of Jerry Seinfeld shows a second person, one of Elton John's faces is 38 px
    assert (stats.faces, stats.new_persons, stats.already_assigned, stats.joined_persons) == (19, 3, 0, 0)
    assert stats.left_unassigned == 2 and stats.dropped == {"singleton": 2}
    found = people_of(database)
    assert sorted(sorted(set(folders)) for folders in found.values()) == [[p] for p in sorted(PEOPLE)]
    assert sorted(len(folders) for folders in found.values()) == [5, 6, 6]
    again = run_person_cluster(PersonClusterConfig(config))
    assert again.new_persons == 0 and again.joined_persons == 0 and again.already_assigned == 17
    assert people_of(database) == found


def test_existing_assignments_and_not_this_person_are_kept(database: str, library: Path, tmp_path: Path) -> None:
    config = loaded(database, library, tmp_path)
    madonna = face_ids_of(database, "madonna")
    with connect(database) as conn:
        ann = conn.execute("INSERT INTO persons DEFAULT VALUES RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO face_persons VALUES (%s, %s, 'manual')", (madonna[0], ann))
        not_person(conn, madonna[1], ann)
    stats = run_person_cluster(PersonClusterConfig(config))
    with psycopg.connect(database) as conn:
        person_of: dict[int, int] = dict(conn.execute("SELECT face_id, person_id FROM face_persons").fetchall())
        by: dict[int, str] = dict(conn.execute("SELECT face_id, assigned_by FROM face_persons").fetchall())
    assert person_of[madonna[0]] == ann and by[madonna[0]] == "manual"  # the hand's work is untouched
    assert person_of.get(madonna[1]) != ann  # recorded "not Ann": never joins her
    assert [person_of[face] for face in madonna[2:]] == [ann] * (PHOTOS - 2)  # the rest join the existing person
    assert stats.joined_persons == PHOTOS - 2 and stats.new_persons == 2


def test_two_faces_of_one_photo_never_share_a_person() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=512).astype(np.float32)
    vectors = base + 0.65 * rng.normal(size=(6, 512)).astype(np.float32)  # pairwise similarity about 0.7
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    faces = FaceRows(np.arange(6), vectors, np.array([0, 0, 1, 2, 3, 4]), np.full(6, -1))
    plan = plan_persons(
        faces, {}, Thresholds(match=0.5, cluster=0.6, export=0.6), PersonClusterConfig(DatabaseConfig(), min_faces=2)
    )
    groups = [set(group) for group in plan.new_groups]
    assert sorted(map(sorted, groups)) == [[0, 4], [1, 2, 3, 5]]  # one look-alike group, split at the photo
    # an existing person with a face in photo 0 takes no second face of photo 0
    faces.persons[0] = 7
    plan = plan_persons(
        faces, {}, Thresholds(match=0.5, cluster=0.6, export=0.6), PersonClusterConfig(DatabaseConfig(), min_faces=2)
    )
    assert plan.joins == {2: 7, 3: 7, 4: 7, 5: 7} and plan.new_groups == []


def test_poor_faces_neither_seed_nor_bridge_persons_in_the_store() -> None:
    """The quality rule of cache clustering holds for the store's persons too (the norm is loaded with each face)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 512)).astype(np.float32)
    good = np.repeat(centres, 10, axis=0) + 0.6 * rng.normal(size=(30, 512)).astype(np.float32)
    poor = rng.normal(size=(3, 512)).astype(np.float32)  # blurred: near no one in particular
    vectors = np.concatenate([good, poor])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    norms = np.concatenate([20 + rng.normal(size=30), np.full(3, 8.0)]).astype(np.float32)
    faces = FaceRows(np.arange(33), vectors, np.arange(33), np.full(33, -1), norms)
    config = PersonClusterConfig(DatabaseConfig(), min_faces=2)
    plan = plan_persons(faces, {}, Thresholds(match=0.5, cluster=0.6, export=0.6), config)
    assert plan.library is not None and (plan.library.poor_faces, plan.library.poor_attached) == (3, 0)
    assert plan.dropped == {"low_quality": 3}
    assert sorted(sorted(group) for group in plan.new_groups) == [list(range(i, i + 10)) for i in (0, 10, 20)]


def test_threshold_is_a_similarity_and_conflicts_are_refused(database: str, library: Path, tmp_path: Path) -> None:
    assert PersonClusterConfig(DatabaseConfig(), threshold=0.65).overrides()["cluster"] == 0.35
    with pytest.raises(ConfigError, match="pass one"):
        PersonClusterConfig(DatabaseConfig(), threshold=0.6, cluster=0.4).overrides()
    with pytest.raises(ConfigError, match="between 0 and 1"):
        PersonClusterConfig(DatabaseConfig(), threshold=1.5).overrides()
    config = loaded(database, library, tmp_path)
    strict = run_person_cluster(PersonClusterConfig(config, algorithm=Algorithm.COMPONENTS, threshold=0.999))
    assert strict.new_persons == 0 and strict.left_unassigned == 19 and strict.thresholds["cluster"] == 0.001


def test_persons_commands(
    database: str, library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded(database, library, tmp_path)
    assert main(["cluster", "--database", database, "--json"]) == 0
    capsys.readouterr()
    assert main(["persons", "list", "--database", database]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 4 and listing[0].split()[:2] == ["person", "faces"]
    first, second = (int(line.split()[0]) for line in listing[1:3])
    assert main(["persons", "name", str(first), "  Ann   Smith ", "--database", database]) == 0
    assert main(["persons", "name", str(second), "ann smith", "--database", database]) == 1
    assert f"already names person {first}" in capsys.readouterr().err
    assert main(["persons", "show", "ANN SMITH", "--database", database, "--json"]) == 0
    assert '"assigned_by": "cluster"' in capsys.readouterr().out
    assert main(["persons", "merge", "ann smith", str(second), "--database", database, "--json"]) == 0
    assert '"faces_moved": 6' in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))  # the confirmation is answered no
    assert main(["persons", "reset", "--database", database]) != 0
    with connect(database) as conn:
        assert resolve_person(conn, "Ann Smith") == first
    capsys.readouterr()
    assert main(["persons", "reset", "--yes", "--database", database, "--json"]) == 0
    out = capsys.readouterr().out  # Ann (named, and a merge) is kept whole; the third person goes
    ann_faces = len(people_of(database)[first])
    assert ann_faces == 12 and '"faces_unassigned": 5' in out and '"persons_removed": 1' in out
    with connect(database) as conn:
        assert resolve_person(conn, "Ann Smith") == first
    assert main(["persons", "reset", "--names", "--yes", "--database", database, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"faces_unassigned": 12' in out and '"persons_removed": 1' in out
    with connect(database) as conn, pytest.raises(PersonError, match="no person"):
        resolve_person(conn, "Ann Smith")


def test_reset_keeps_hand_work_and_names(database: str, library: Path, tmp_path: Path) -> None:
    config = loaded(database, library, tmp_path)
    run_person_cluster(PersonClusterConfig(config))
    elton = face_ids_of(database, "elton_john")[1]  # the first is the 38 px face clustering leaves alone
    with connect(database) as conn:
        person = conn.execute("SELECT person_id FROM face_persons WHERE face_id = %s", (elton,)).fetchone()[0]
        name_person(conn, person, "Elton")
        conn.execute("UPDATE face_persons SET assigned_by = 'manual' WHERE face_id = %s", (elton,))
        assert reset_persons(conn, None) == {"faces_unassigned": 12, "persons_removed": 2, "persons_kept": 1}
        assert len(people_of(database)[person]) == 5  # named: kept whole
        result = reset_persons(conn, None, names=True)
        assert result == {"faces_unassigned": 4, "persons_removed": 0, "persons_kept": 1}
        assert resolve_person(conn, "elton") == person
        with pytest.raises(PersonError, match="at least one person"):
            merge_persons(conn, person, [person])
    stats = run_person_cluster(PersonClusterConfig(config))  # Elton's faces find him again
    assert stats.new_persons == 2 and stats.joined_persons == 3  # the fourth face is too far from his one face
    assert people_of(database)[person] == ["elton_john"] * (1 + stats.joined_persons)


def test_face_sets_load_as_persons(database: str, library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=tmp_path / "plan.json", min_faces=3))
    run_export(ExportConfig(tmp_path / "plan.json"))
    config = loaded(database, library, tmp_path, sets=sets)
    found = people_of(database)
    assert len(found) == 3 and all(len(set(folders)) == 1 for folders in found.values())
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT number, person_id, members, matched FROM face_sets ORDER BY number").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3] and all(r[2] == r[3] > 0 for r in rows)
        assert {r[1] for r in rows} == set(found)
        kinds = conn.execute("SELECT DISTINCT assigned_by FROM face_persons").fetchall()
        assert kinds == [("faceset",)]
    again = run_load(LoadConfig(config, tmp_path / "no-caches", (library,), sets=sets))
    assert again.face_sets_loaded == 3 and again.face_set_faces_assigned == 0 and again.face_set_persons_created == 0
    with connect(database) as conn:
        assert resolve_person(conn, "faceset_002") == rows[1][1]
    stats = run_person_cluster(PersonClusterConfig(config))  # the sets' persons are taken as they are
    assert stats.new_persons == 0


def test_assign_refuses_a_second_face_of_the_same_photo(
    database: str, library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = loaded(database, library, tmp_path)
    run_person_cluster(PersonClusterConfig(config))
    madonna = face_ids_of(database, "madonna")
    person = person_of(database, madonna[1])
    with connect(database) as conn:
        twin = conn.execute(
            "INSERT INTO face_detections(image_id, box, keypoints, score, face_short, model, embedding) "
            "SELECT image_id, '{1,1,9,9}', keypoints, score, face_short, model, embedding FROM face_detections "
            "WHERE id = %s RETURNING id",
            (madonna[1],),
        ).fetchone()[0]
    assert main(["persons", "assign", str(twin), str(person), "--database", database]) == 1
    err = capsys.readouterr().err
    assert f"already has face {madonna[1]} of the same photo" in err and "madonna" in err and "--move-other" in err
    with connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM face_persons WHERE face_id = %s", (twin,)).fetchone()[0] == 0
    assert main(["persons", "assign", str(twin), str(person), "--move-other", "--database", database, "--json"]) == 0
    out = capsys.readouterr().out
    assert f'"moved_out": [\n    {madonna[1]}\n  ]' in out and '"lifted_not_person": false' in out
    assert main(["persons", "not", str(twin), str(person), "--database", database]) == 0
    assert main(["persons", "assign", str(twin), str(person), "--database", database]) == 0
    assert "the record that it is not this person was lifted" in capsys.readouterr().out
    with connect(database) as conn:
        rows = conn.execute(
            "SELECT face_id, assigned_by FROM face_persons WHERE face_id = ANY(%s) ORDER BY face_id",
            ([madonna[1], twin],),
        ).fetchall()
    assert rows == [(twin, "manual")]


def test_unassigned_faces_with_their_candidates_and_hidden_persons(
    database: str, library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = loaded(database, library, tmp_path)
    run_person_cluster(PersonClusterConfig(config))
    elton = face_ids_of(database, "elton_john")
    person = person_of(database, elton[1])
    with connect(database) as conn:
        conn.execute("DELETE FROM face_persons WHERE face_id = %s", (elton[2],))
        free = [
            int(r[0])
            for r in conn.execute(
                "SELECT id FROM face_detections f "
                "WHERE NOT EXISTS (SELECT 1 FROM face_persons a WHERE a.face_id = f.id) ORDER BY id"
            )
        ]
    assert elton[2] in free
    capsys.readouterr()
    assert main(["persons", "unassigned", "--database", database, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["unassigned"] == len(free) and [face["face"] for face in listed["faces"]] == free
    mine = next(face for face in listed["faces"] if face["face"] == elton[2])
    assert mine["candidate"] == person and 0.0 <= mine["distance"] < 0.6
    assert main(["persons", "unassigned", "--limit", "1", "--database", database, "--nl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["face"] == free[0]
    # hidden: out of the list, never a candidate, never joined by clustering
    assert main(["persons", "hide", str(person), "--database", database]) == 0
    capsys.readouterr()
    assert main(["persons", "list", "--database", database, "--json"]) == 0
    assert person not in [row["id"] for row in json.loads(capsys.readouterr().out)]
    assert main(["persons", "list", "--hidden", "--database", database, "--json"]) == 0
    assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [person]
    assert main(["persons", "unassigned", "--database", database, "--json"]) == 0
    mine = next(face for face in json.loads(capsys.readouterr().out)["faces"] if face["face"] == elton[2])
    assert mine["candidate"] != person
    hidden = run_person_cluster(PersonClusterConfig(config))
    assert person_of(database, elton[2]) is None
    assert hidden.joined_persons == 0
    assert main(["persons", "unhide", str(person), "--database", database]) == 0
    shown = run_person_cluster(PersonClusterConfig(config))
    assert person_of(database, elton[2]) == person
    assert shown.joined_persons == 1


def test_cluster_of_a_store_with_no_faces_says_to_load_them(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    with connect(database) as conn:
        migrate(conn)
    assert main(["cluster", "--database", database]) == 1
    assert capsys.readouterr().err.startswith("error: the database holds no faces to cluster: `facesets load")


def test_persons_changes_are_logged_and_undone_from_the_command_line(
    database: str, library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded(database, library, tmp_path)
    run_person_cluster(PersonClusterConfig(DatabaseConfig(database)))
    before = people_of(database)
    first, second = sorted(before)[:2]
    args = ["--database", database]
    assert main(["persons", "name", str(first), "Ann", *args]) == 0
    assert main(["persons", "merge", "ann", str(second), *args]) == 0
    assert main(["persons", "hide", "ann", *args]) == 0
    capsys.readouterr()
    assert main(["persons", "activity", "--json", *args]) == 0
    summaries = [(row["summary"], row["undone"]) for row in json.loads(capsys.readouterr().out)]
    assert summaries == [
        (f"hid person {first}", False),
        (f"merged person {second} into person {first}", False),
        (f"named person {first} 'Ann'", False),
    ]
    assert main(["persons", "undo", *args]) == 0 and main(["persons", "undo", *args]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"undone: merged person {second} into person {first}")
    assert people_of(database) == before  # the merge is undone: both persons have their own faces again
    with connect(database) as conn:
        assert resolve_person(conn, "Ann") == first
        assert conn.execute("SELECT hidden FROM persons WHERE id = %s", (first,)).fetchone()[0] is False
    assert main(["persons", "undo", *args]) == 0 and main(["persons", "undo", *args]) == 1
    assert "nothing to undo" in capsys.readouterr().err
    with connect(database) as conn, pytest.raises(PersonError, match="no person"):
        resolve_person(conn, "Ann")
    assert main(["persons", "activity", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.endswith("(undone)") for line in lines)
