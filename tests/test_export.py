"""facesets cluster + export on real photos: sets, manifests, numbering, matching, eras, report, crashes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import orjson
import pytest
from PIL import Image

from facesets.artifacts.queue import append_entries, scan_folders
from facesets.base.errors import ConfigError, FaceSetError, FacesetsError
from facesets.cluster.algorithms import Algorithm
from facesets.cluster.identify import ClusterConfig, PackEmbedder, run_cluster
from facesets.embed.queue import EmbedConfig, run_embed
from facesets.export import sets as export_module
from facesets.export.sets import ExportConfig, run_export
from facesets.models.packs import ModelPack
from tests.conftest import REPO

PEOPLE = {"madonna": 2012, "elton_john": 2016, "jerry_seinfeld": 2021}
PHOTOS = 6


def _library(faces_dir: Path, root: Path, people: dict[str, int], first: int = 1) -> Path:
    """Photos of each person, re-saved with an EXIF capture date (one year per person)."""
    for person, year in people.items():
        folder = root / person
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(first, first + PHOTOS):
            with Image.open(faces_dir / "celeb5" / person / f"train_{i:02d}.jpg") as image:
                exif = Image.Exif()
                exif.get_ifd(0x8769)[36867] = f"{year}:06:01 12:00:00"
                image.convert("RGB").save(folder / f"{i:02d}.jpg", exif=exif, quality=95)
    return root


def _cache(root: Path, pack_dir: Path, name: str) -> Path:
    queue = root.parent / f"{name}.queue.json"
    append_entries(queue, scan_folders([root]).entries)
    cache = root.parent / f"{name}.npz"
    run_embed(EmbedConfig(queue=queue, cache=cache, model_dir=pack_dir))
    return cache


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, pack_dir: Path) -> Path:
    root = _library(faces_dir, tmp_path_factory.mktemp("lib") / "photos", PEOPLE)
    return _cache(root, pack_dir, "faces")


def _run(cache: Path | tuple[Path, ...], sets: Path, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = sets.parent / "clusters.json"
    caches = cache if isinstance(cache, tuple) else (cache,)
    summary = run_cluster(ClusterConfig(caches=caches, sets_dir=sets, plan=plan, min_faces=3, **options))
    exported = run_export(ExportConfig(plan))
    return summary.as_dict(), exported.as_dict()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _members(folder: Path) -> list[dict[str, object]]:
    return list(orjson.loads((folder / "manifest.json").read_bytes())["members"])


def test_the_plan_and_the_report_record_what_was_learned_about_the_library(library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    summary, _exported = _run(library, sets)
    plan = orjson.loads((tmp_path / "clusters.json").read_bytes())
    learned = plan["estimate"]
    assert learned == summary["estimate"]
    assert learned["faces"] == summary["clustered"] == 19  # 18 subjects and a bystander
    assert (learned["source"], learned["impostor_mean"], learned["impostor_sd"]) == ("recognizer", 0.013, 0.1)
    assert learned["seed_distance"] == round(1 - learned["seed_similarity"], 4)
    assert plan["thresholds"]["cluster"] is None and plan["thresholds"]["export"] is None
    report = (sets / "report.html").read_text()
    assert "cluster learned from the library" in report and "Learned from 19 faces: strangers 0.013 +- 0.100" in report


def test_new_sets_have_crops_and_manifests(library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    _summary, exported = _run(library, sets)
    assert exported["new_sets"] == ["faceset_001", "faceset_002", "faceset_003"]
    people = set()
    for number in (1, 2, 3):
        folder = sets / f"faceset_{number:03d}"
        members = _members(folder)
        assert len(members) >= 3
        people |= {Path(str(m["source"])).parent.name for m in members}
        assert len({Path(str(m["source"])).parent.name for m in members}) == 1  # one person per set
        for member in members:
            assert set(member) >= {"file", "source", "content_hash", "bbox", "score", "face_short", "distance"}
            assert {"cache", "row", "asset_id", "taken"} <= set(member)
            crop = cv2.imread(str(folder / str(member["file"])))
            assert crop is not None and crop.shape == (512, 512, 3)
        assert sorted(p.name for p in folder.iterdir()) == sorted([*(str(m["file"]) for m in members), "manifest.json"])
    assert people == set(PEOPLE)
    top = orjson.loads((sets / "manifest.json").read_bytes())
    assert top["format"] == "facesets.sets" and top["highest_number"] == 3 and len(top["applied_plans"]) == 1


def test_running_twice_changes_nothing(library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    _run(library, sets)
    applied = tmp_path / "applied.json"
    applied.write_bytes((tmp_path / "clusters.json").read_bytes())
    before = _snapshot(sets)
    summary, exported = _run(library, sets)  # a new plan that finds nothing new: nothing to do
    assert summary["candidates"] == 0 and (exported["nothing_to_do"], exported["already_applied"]) == (True, False)
    again = run_export(ExportConfig(applied))  # the plan applied before
    assert (again.already_applied, again.nothing_to_do) == (True, False)
    assert _snapshot(sets) == before


def test_order_of_caches_and_faces_does_not_matter(
    library: Path, tmp_path: Path, faces_dir: Path, pack_dir: Path
) -> None:
    other = _library(faces_dir, tmp_path / "again", dict(reversed(PEOPLE.items())))
    reordered = _cache(other, pack_dir, "reordered")  # same bytes, other paths and order
    a, b = tmp_path / "a" / "sets", tmp_path / "b" / "sets"
    _run(library, a)
    _run(reordered, b)
    keys_a = {f.name: sorted(str(m["key"]) for m in _members(f)) for f in a.glob("faceset_???")}
    keys_b = {f.name: sorted(str(m["key"]) for m in _members(f)) for f in b.glob("faceset_???")}
    assert keys_a == keys_b


def test_numbers_are_never_reused_and_new_faces_join_existing_sets(
    library: Path, tmp_path: Path, faces_dir: Path, pack_dir: Path
) -> None:
    sets = tmp_path / "facesets_swap_ready"
    _run(library, sets)
    shutil.rmtree(sets / "faceset_003")  # a set removed by hand: its number stays used
    more = _library(faces_dir, tmp_path / "more", {"madonna": 2013, "ben_afflek": 2019}, first=8)
    summary, exported = _run((library, _cache(more, pack_dir, "more")), sets)
    assert exported["new_sets"] == ["faceset_004"]
    assert {Path(str(m["source"])).parent.name for m in _members(sets / "faceset_004")} == {"ben_afflek"}
    madonna = next(f for f in sets.glob("faceset_00?") if "madonna" in str(_members(f)[0]["source"]))
    assert madonna.name in exported["extended_sets"]
    assert summary["matched"] >= 4


def test_hand_made_set_is_matched_and_only_added_to(
    library: Path, tmp_path: Path, faces_dir: Path, pack: ModelPack
) -> None:
    sets = tmp_path / "facesets_swap_ready"
    hand = sets / "faceset_010"
    hand.mkdir(parents=True)
    for i in (15, 16, 17):
        shutil.copy(faces_dir / "celeb5" / "madonna" / f"train_{i:02d}.jpg", hand / f"mine_{i}.jpg")
    originals = _snapshot(hand)
    with pytest.raises(FaceSetError, match="--model-dir"):
        _run(library, sets)
    _summary, exported = _run(library, sets, embedder=PackEmbedder(pack, ("cpu",)))
    assert "faceset_010" in exported["extended_sets"]
    assert all("madonna" not in str(_members(f)[0]["source"]) for f in sets.glob("faceset_01[1-9]"))
    assert all(_snapshot(hand)[name] == data for name, data in originals.items())  # untouched, only added to
    assert exported["new_sets"] == ["faceset_011", "faceset_012"]


def test_eras_split_by_capture_date_and_thin_eras(library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    plan = tmp_path / "clusters.json"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=plan, min_faces=3))
    run_export(ExportConfig(plan, split_eras=True, era_years=5, min_era_faces=50))
    thin = sorted(p.name for p in (sets / "_thin").iterdir())
    assert len(thin) == 3 and all(name.split("_", 2)[2] in {"2010-2014", "2015-2019", "2020-2024"} for name in thin)
    for folder in (sets / "_thin").iterdir():
        number = folder.name[:11]
        assert sorted(p.name for p in folder.iterdir()) == sorted(str(m["file"]) for m in _members(sets / number))
    member = _members(sets / "faceset_001")[0]
    assert str(member["taken"]).endswith("-06-01")


def test_report_is_valid_html_with_every_set(library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    _run(library, sets)
    page = (sets / "report.html").read_text()
    parser = HTMLParser()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for number in (1, 2, 3):
        assert f"faceset_{number:03d}" in page
        assert cv2.imread(str(sets / "_report" / f"faceset_{number:03d}.jpg")) is not None


def test_a_crash_during_export_leaves_a_consistent_folder_and_a_rerun_finishes(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = tmp_path / "clean" / "sets"
    _, whole = _run(library, clean)
    sets = tmp_path / "crash" / "sets"
    plan = sets.parent / "clusters.json"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=plan, min_faces=3))
    real = export_module.atomic_write_bytes  # type: ignore[attr-defined]
    calls = {"n": 0}

    def full_disk(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(export_module, "atomic_write_bytes", full_disk)
    with pytest.raises(FaceSetError, match="disk is full"):
        run_export(ExportConfig(plan))
    assert not (sets / "manifest.json").exists()
    for folder in sets.glob("faceset_*"):  # a set that exists is complete: crops and manifest agree
        assert sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg") == sorted(
            str(m["file"]) for m in _members(folder)
        )
    monkeypatch.setattr(export_module, "atomic_write_bytes", real)
    resumed = run_export(ExportConfig(plan)).as_dict()
    assert not list(sets.glob(".partial-*"))
    # the resumed run reports the whole run it completes, in its summary, the run record and the report
    for key in ("new_sets", "extended_sets", "faces_written", "faces_skipped"):
        assert resumed[key] == whole[key], key
    record = orjson.loads((sets / "manifest.json").read_bytes())["runs"][-1]
    assert (record["new_sets"], record["faces_written"]) == (whole["new_sets"], whole["faces_written"])
    assert f"faces written: {whole['faces_written']}" in (sets / "report.html").read_text().lower()
    strip = {"manifest.json", "report.html"}
    assert {k: v for k, v in _snapshot(sets).items() if Path(k).name not in strip} == {
        k: v for k, v in _snapshot(clean).items() if Path(k).name not in strip
    }


def test_bad_manifests_and_models_are_clear_errors(library: Path, tmp_path: Path) -> None:
    sets = tmp_path / "facesets_swap_ready"
    _run(library, sets)
    (sets / "faceset_002" / "manifest.json").write_text("{not json")
    with pytest.raises(FaceSetError, match=r"faceset_002/manifest.json is not valid JSON"):
        _run(library, sets)
    (sets / "faceset_002" / "manifest.json").unlink()
    (sets / "manifest.json").write_text('{"format": "facesets.sets", "version": 99}')
    with pytest.raises(FaceSetError, match="version 99, newer"):
        _run(library, sets)


def test_a_model_without_thresholds_needs_them_on_the_command_line() -> None:
    from facesets.cluster.thresholds import resolve_thresholds
    from facesets.models.packs import PackIdentity

    unknown = PackIdentity("custom", "det.onnx", "0" * 64, "rec.onnx", "1" * 64)
    with pytest.raises(ConfigError, match=r"pass --match-distance \(a cosine distance"):
        resolve_thresholds(unknown, {"match": None, "cluster": None, "export": None, "closeness": None})
    learned = resolve_thresholds(unknown, {"match": 0.4, "cluster": None, "export": None, "closeness": None})
    assert (learned.match, learned.cluster, learned.export, learned.impostors) == (0.4, None, None, None)
    given = resolve_thresholds(unknown, {"match": 0.4, "cluster": 0.5, "export": 0.45, "closeness": None})
    assert (given.match, given.cluster, given.export, given.closeness) == (0.4, 0.5, 0.45, 0.5)
    with pytest.raises(ConfigError, match="--cluster-distance must be between 0 and 2, got 5"):
        resolve_thresholds(unknown, {"match": 0.4, "cluster": 5.0, "export": 0.45, "closeness": None})


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "work" / name), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cluster_immich_clusters_then_exports_with_any_option_spelling(library: Path, tmp_path: Path) -> None:
    done = _script("cluster_immich.py", f"--cache={library}", "--plan=other.json", "--sets=s2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["cluster"]["new_sets"] == len(PEOPLE) and summary["export"]["new_sets"]
    assert (tmp_path / "other.json").is_file() and not (tmp_path / "clusters.json").exists()
    assert sorted(p.name for p in (tmp_path / "s2").glob("faceset_*")) == summary["export"]["new_sets"]
    missing = _script("cluster_immich.py", "--sets", "s3", cwd=tmp_path)
    assert missing.returncode == 2 and "--cache is required" in missing.stderr and not (tmp_path / "s3").exists()


@pytest.mark.parametrize("script", ["cluster_immich.py", "immich_stage.py", "embed_worker.py"])
def test_work_scripts_name_themselves_in_their_usage(script: str, tmp_path: Path) -> None:
    done = _script(script, "--help", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"Usage: {script} [OPTIONS]")
    assert "facesets" not in done.stdout.splitlines()[0]
    if script == "cluster_immich.py":
        assert (
            "then export it" in " ".join(done.stdout.split())
            and "--split-eras" in done.stdout
            and "--database" not in done.stdout
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [("hash", "../../../ESCAPED"), ("hash", "a" * 63 + "/"), ("bbox", ["../x", 0, 1, 1]), ("set", "../1")],
)
def test_a_hostile_plan_writes_nothing_outside_the_sets(library: Path, tmp_path: Path, field: str, value: Any) -> None:
    sets, plan_path = tmp_path / "sets", tmp_path / "clusters.json"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=plan_path, min_faces=3))
    plan = orjson.loads(plan_path.read_bytes())
    if field == "set":
        plan["identities"][0]["set"] = value
    else:
        plan["identities"][0]["members"][0][field] = value
    plan_path.write_bytes(orjson.dumps(plan))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(FaceSetError, match="is not a valid cluster plan"):
        run_export(ExportConfig(plan_path))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not list(tmp_path.parent.rglob("ESCAPED*"))


def test_era_rebuilds_never_delete_what_facesets_did_not_make(library: Path, tmp_path: Path) -> None:
    from facesets.artifacts.facesetdir import read_set
    from facesets.export.sets import _rebuild_eras

    sets = tmp_path / "facesets_swap_ready"
    plan = tmp_path / "clusters.json"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=plan, min_faces=3))
    run_export(ExportConfig(plan, split_eras=True, era_years=5, min_era_faces=50))
    mine = sets / "faceset_001_mykeep"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    era = next((sets / "_thin").glob("faceset_001_*"))
    (era / "notes.txt").write_text("era notes")
    _rebuild_eras(sets, read_set(1, sets / "faceset_001"), 5, 50)
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (era / "notes.txt").read_text() == "era notes"  # an era folder the user wrote into: left alone
    other = next((sets / "_thin").glob("faceset_002_*"))
    _rebuild_eras(sets, read_set(2, sets / "faceset_002"), 5, 50)
    assert other.is_dir() and sorted(p.name for p in other.iterdir()) == sorted(
        str(m["file"]) for m in _members(sets / "faceset_002")
    )  # one of ours: rebuilt


def test_a_plan_made_against_other_sets_is_refused(library: Path, tmp_path: Path) -> None:
    from facesets.artifacts.layout import SETS_LOCK
    from facesets.base.fsio import exclusive_lock

    sets = tmp_path / "facesets_swap_ready"
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=first, min_faces=3))
    run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=second, min_faces=3, algorithm=Algorithm.AVERAGE))
    assert run_export(ExportConfig(first)).new_sets
    before = _snapshot(sets)
    with pytest.raises(FaceSetError, match=r"was made against .* before any plan, but plan \w+ has been applied since"):
        run_export(ExportConfig(second))
    assert _snapshot(sets) == before
    with exclusive_lock(sets / SETS_LOCK), pytest.raises(FacesetsError, match="locked by another facesets process"):
        run_cluster(ClusterConfig(caches=(library,), sets_dir=sets, plan=tmp_path / "c.json", min_faces=3))


def test_a_photo_changed_since_clustering_is_skipped_not_cropped(
    faces_dir: Path, pack_dir: Path, tmp_path: Path
) -> None:
    root = _library(faces_dir, tmp_path / "photos", PEOPLE)
    cache = _cache(root, pack_dir, "faces")
    sets, plan = tmp_path / "sets", tmp_path / "clusters.json"
    run_cluster(ClusterConfig(caches=(cache,), sets_dir=sets, plan=plan, min_faces=3))
    changed = sorted((root / "madonna").iterdir())[0]
    with Image.open(changed) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed, "JPEG")  # same name, other pixels
    summary = run_export(ExportConfig(plan)).as_dict()
    assert summary["faces_skipped"] == 1
    assert summary["skip_reasons"] == {"changed since it was clustered (run facesets cluster again)": 1}
    sources = [str(m["source"]) for folder in sets.glob("faceset_*") for m in _members(folder)]
    assert str(changed) not in sources and len(sources) == summary["faces_written"]


def test_a_plan_reads_back_as_it_was_written(library: Path, tmp_path: Path) -> None:
    from facesets.artifacts.plan import read_plan, write_plan

    plan_path = tmp_path / "clusters.json"
    run_cluster(ClusterConfig(caches=(library,), sets_dir=tmp_path / "sets", plan=plan_path, min_faces=3))
    plan = read_plan(plan_path)
    assert plan.id == plan.with_id().id and plan.faces == sum(len(i.members) for i in plan.identities) > 0
    write_plan(tmp_path / "again.json", plan)
    assert read_plan(tmp_path / "again.json") == plan
    assert orjson.loads((tmp_path / "again.json").read_bytes()) == orjson.loads(plan_path.read_bytes())
