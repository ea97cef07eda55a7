"""The export stage: a cluster plan -> ``facesets_swap_ready/`` (crops, manifests, eras, report).

Order of writes, so that a kill at any instant leaves the folder consistent:

1. a new set is built in ``.partial-faceset_NNN/`` and renamed into place when complete;
2. faces added to an existing set: each crop is written atomically, then the set's manifest (atomically);
   a crop the manifest does not list yet is simply rewritten by the next run;
3. era folders are rebuilt beside the sets (derived data, never canonical);
4. the report, then the top-level ``manifest.json`` last: it records the plan as applied. Until then a re-run
   applies the same plan again, skipping every crop already written; after it, a re-run changes nothing.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import cv2
import numpy as np
from PIL import Image

from ..artifacts.facesetdir import (
    FaceSet,
    Member,
    TopManifest,
    highest_number,
    read_set,
    read_top,
    set_name,
    write_set_manifest,
    write_top,
)
from ..artifacts.layout import SETS_LOCK
from ..artifacts.plan import Plan, PlanFace, PlanIdentity, read_plan
from ..base.errors import FaceSetError, ImageLoadError
from ..base.fsio import atomic_write_bytes, exclusive_lock
from ..base.paths import to_linux
from ..base.pipeline import read_image
from ..base.progress import Progress, ProgressFactory
from ..models.decode import decode
from ..models.faces import align
from .report import write_report

log = logging.getLogger(__name__)

CROP_SIZE = 512
JPEG_QUALITY = 95
PARTIAL = ".partial-"
EXIF_IFD, DATE_ORIGINAL, DATE_TIME = 0x8769, 36867, 306


@dataclass(frozen=True)
class ExportConfig:
    plan: Path
    sets_dir: Path | None = None
    split_eras: bool = False
    era_years: int = 5
    min_era_faces: int | None = None
    report: bool = True
    io_concurrency: int = 4


@dataclass
class ExportSummary:
    plan: str = ""
    already_applied: bool = False  # this plan was applied before: nothing is done again
    nothing_to_do: bool = False  # a plan of no new identity and no new photo: the sets stay as they are
    new_sets: list[str] = field(default_factory=list)
    extended_sets: list[str] = field(default_factory=list)
    faces_written: int = 0
    faces_skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    report: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_export(config: ExportConfig, progress: ProgressFactory | None = None) -> ExportSummary:
    """Apply the plan (see the module docstring); ``progress(total)`` makes the bar over the plan's faces."""
    plan = read_plan(config.plan)
    root = Path(config.sets_dir or plan.sets_dir)
    _create(root)
    summary = ExportSummary(plan=plan.id)
    with exclusive_lock(root / SETS_LOCK):
        top = read_top(root)
        if plan.id in top.applied_plans:
            summary.already_applied = True
            return summary
        if _changes_nothing(plan, top):
            summary.nothing_to_do = True
            return summary
        _check_made_against(root, top, plan)
        _remove_partials(root)
        _check_numbers(root, top, plan)
        params = {"plan": plan.id, "algorithm": plan.algorithm, "thresholds": plan.thresholds}
        bar = progress(plan.faces) if progress else None
        touched = [_apply_identity(root, identity, params, summary, config, bar) for identity in plan.identities]
        if bar:
            bar.close()
        if config.split_eras:
            for faceset in touched:
                _rebuild_eras(root, faceset, config.era_years, config.min_era_faces or plan.min_faces)
        if config.report:
            summary.report = str(write_report(root, plan.to_dict(), summary.as_dict()))
        _commit(root, top, plan, summary)
    return summary


def _check_made_against(root: Path, top: TopManifest, plan: Plan) -> None:
    """A plan made against other sets than these (another plan applied since) would put faces in the wrong sets."""
    if plan.made_against is None:  # a plan from before this check
        return
    current = top.applied_plans[-1] if top.applied_plans else ""
    if plan.made_against != current:
        then = f"after plan {plan.made_against}" if plan.made_against else "before any plan"
        raise FaceSetError(
            f"the plan {plan.id} was made against {root} as it was {then}, but plan {current or '(none)'} has "
            "been applied since: run facesets cluster again, then export"
        )


def _changes_nothing(plan: Plan, top: TopManifest) -> bool:
    return not plan.identities and set(plan.processed) <= top.processed


def _create(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FaceSetError(f"cannot create {root}: {exc.strerror}") from exc


def _remove_partials(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith(PARTIAL) and entry.is_dir():
            log.info("removing %s left by an interrupted export", entry)
            shutil.rmtree(entry)


def _check_numbers(root: Path, top: TopManifest, plan: Plan) -> None:
    used = highest_number(root, top)
    for identity in plan.identities:
        number = identity.set
        exists = (root / set_name(number)).is_dir()
        if identity.new and number <= used and not exists:
            raise FaceSetError(
                f"the plan {plan.id} creates {set_name(number)}, but numbers up to {used} are taken since it was "
                "made: run facesets cluster again, then export"
            )
        if not identity.new and not exists:
            raise FaceSetError(f"{root / set_name(number)} is gone since the plan was made: run facesets cluster again")


def _apply_identity(
    root: Path,
    identity: PlanIdentity,
    params: dict[str, Any],
    summary: ExportSummary,
    config: ExportConfig,
    progress: Progress | None,
) -> FaceSet:
    number = identity.set
    final = root / set_name(number)
    new = not final.exists()
    folder = root / f"{PARTIAL}{set_name(number)}" if new else final
    _create(folder)
    faceset = read_set(number, folder)
    known = {member.key for member in faceset.members}
    todo = [face for face in identity.members if face.key not in known]
    # the plan's faces already in the set were written by an interrupted run of this same plan: its work counts
    resumed = len(identity.members) - len(todo)
    summary.faces_written += resumed
    if progress:
        progress.advance(resumed)
    added = _write_crops(folder, todo, summary, config.io_concurrency, progress)
    faceset.members.extend(added)
    write_set_manifest(faceset, params)
    if new:
        _rename(folder, final)
        faceset.folder = final
    if identity.new:
        summary.new_sets.append(final.name)
    elif added or resumed:
        summary.extended_sets.append(final.name)
    return faceset


def _write_crops(
    folder: Path,
    faces: list[PlanFace],
    summary: ExportSummary,
    workers: int,
    progress: Progress | None,
) -> list[Member]:
    by_source: dict[str, list[PlanFace]] = defaultdict(list)
    for face in faces:
        by_source[face.source].append(face)
    added: list[Member] = []
    items = sorted(by_source.items())
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda item: _crops_of(folder, *item), items)
        for (_, of_source), (members, reason) in zip(items, results, strict=True):
            if progress:
                progress.advance(len(of_source))
            if reason:
                summary.faces_skipped += 1
                summary.skip_reasons[reason] = summary.skip_reasons.get(reason, 0) + 1
                continue
            added.extend(members)
            summary.faces_written += len(members)
    return added


def _crops_of(folder: Path, source: str, faces: list[PlanFace]) -> tuple[list[Member], str]:
    """Decode one photo, write the aligned crop of each of its faces; or the reason it could not be read."""
    path = _local_path(source)
    try:
        data = read_image(str(path))
        if blake3.blake3(data).hexdigest() != faces[0].hash:  # a crop of other pixels would be a wrong face
            raise ImageLoadError("changed since it was clustered (run facesets cluster again)")
        image = decode(data)
    except ImageLoadError as exc:
        log.warning("skipping %s: %s", source, exc.reason)
        return [], exc.reason
    taken = _capture_date(data)
    members = []
    for face in faces:
        name = _crop_name(face)
        crop = align(image.pixels, np.asarray(face.kps, np.float32), CROP_SIZE)
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return [], "cannot encode the crop"
        _write(folder / name, encoded.tobytes())
        members.append(_member(name, face, taken))
    return members, ""


def _local_path(source: str) -> Path:
    """The photo as this machine sees it: a cache written on Windows holds ``X:\\...`` paths."""
    if Path(source).exists():
        return Path(source)
    mapped = to_linux(source)
    return Path(mapped) if mapped else Path(source)


def _crop_name(face: PlanFace) -> str:
    """A crop's file name: hex and digits only (:func:`read_plan` checked the fields), never a path."""
    x1, y1 = (round(value) for value in face.bbox[:2])
    return f"{face.hash[:16]}_{x1}_{y1}.jpg"


def _member(name: str, face: PlanFace, taken: str) -> Member:
    return Member(
        file=name,
        key=face.key,
        source=face.source,
        content_hash=face.hash,
        bbox=face.bbox,
        score=face.score,
        face_short=face.face_short,
        distance=face.distance,
        cache=face.cache,
        row=face.row,
        asset_id=face.asset_id,
        taken=taken,
    )


def _capture_date(data: bytes) -> str:
    """``YYYY-MM-DD`` from EXIF DateTimeOriginal (else DateTime), or ``""``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            raw = exif.get_ifd(EXIF_IFD).get(DATE_ORIGINAL) or exif.get(DATE_TIME)
    except (OSError, ValueError, SyntaxError):
        return ""
    if not isinstance(raw, str) or len(raw) < 10 or not raw[:4].isdigit():
        return ""
    return raw[:10].replace(":", "-")


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FaceSetError(
                f"the disk is full while writing {path}: free some space and run facesets export again "
                "(what was written is kept; nothing is duplicated)"
            ) from exc
        raise FaceSetError(f"cannot write {path}: {exc.strerror}") from exc


def _rename(source: Path, target: Path) -> None:
    try:
        source.replace(target)
    except OSError as exc:
        raise FaceSetError(f"cannot rename {source} to {target}: {exc.strerror}") from exc


def _era_of(member: Member, years: int) -> str:
    if not member.taken:
        return "undated"
    start = int(member.taken[:4]) // years * years
    return f"{start}-{start + years - 1}"


def _rebuild_eras(root: Path, faceset: FaceSet, years: int, min_faces: int) -> None:
    """Derived folders ``faceset_NNN_<era>`` (or ``_thin/...`` when small), rebuilt from the set's members."""
    eras: dict[str, list[Member]] = defaultdict(list)
    for member in faceset.members:
        eras[_era_of(member, years)].append(member)
    staging = root / f"{PARTIAL}eras-{faceset.name}"
    _create(staging)
    for era, members in sorted(eras.items()):
        target = staging / ("_thin" if len(members) < min_faces else "") / f"{faceset.name}_{era}"
        _create(target)
        for member in members:
            _link(faceset.folder / member.file, target / member.file)
    for old in _derived_folders(root, faceset):
        shutil.rmtree(old)
    for folder in (staging, staging / "_thin"):
        for entry in sorted(folder.glob(f"{faceset.name}_*")):
            _create(root / folder.relative_to(staging))
            target = root / folder.relative_to(staging) / entry.name
            if target.exists():  # a folder of the user's under an era's name: left alone, this era not written
                log.warning("leaving %s alone: it holds files facesets did not put there", target)
                continue
            _rename(entry, target)
    shutil.rmtree(staging)


def _derived_folders(root: Path, faceset: FaceSet) -> Iterator[Path]:
    """The era folders export made for ``faceset``: named like an era, holding nothing but copies or links of its
    members. Any other folder (a user's ``faceset_001_mykeep/``, an era folder with notes added) is left alone."""
    members = {member.file for member in faceset.members}
    era = re.compile(rf"^{re.escape(faceset.name)}_(\d{{4}}-\d{{4}}|undated)$")
    for folder in (root, root / "_thin"):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.glob(f"{faceset.name}_*")):
            if not entry.is_dir() or entry.is_symlink():
                continue
            if era.match(entry.name) and all(item.is_file() and item.name in members for item in entry.iterdir()):
                yield entry
            else:
                log.warning("leaving %s alone: it is not an era folder facesets made", entry)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _commit(root: Path, top: TopManifest, plan: Plan, summary: ExportSummary) -> None:
    top.highest_number = max([highest_number(root, top)] + [identity.set for identity in plan.identities])
    top.processed.update(plan.processed)
    top.applied_plans.append(plan.id)
    for identity in plan.identities:
        name = set_name(identity.set)
        entry = top.sets.setdefault(name, {"created_by": plan.id if identity.new else "existing", "added": 0})
        entry["added"] = int(entry.get("added", 0)) + len(identity.members)
    top.runs.append(
        {
            "plan": plan.id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "algorithm": plan.algorithm,
            "thresholds": plan.thresholds,
            "new_sets": summary.new_sets,
            "extended_sets": summary.extended_sets,
            "faces_written": summary.faces_written,
            "faces_skipped": summary.faces_skipped,
        }
    )
    write_top(root, top)
