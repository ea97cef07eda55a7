"""Every file name the stages hand to each other, in one place (the artifacts' folders are the caller's).

<caches>/faces.npz, index.sqlite, clip.sqlite     what ``index`` writes and ``load`` reads
<caches>/<user>.npz                               a user's face cache (``finalize``, the Windows side)
<staging>/queue-<user>.json, state-<user>.json    what ``immich stage`` writes
<staging>/clusters-<user>.json, finalize-<user>.json
<sets>/.facesets.lock                             held by export while it applies a plan, by cluster reading
clusters.json                                     the default cluster plan
<file>.journal, <file>.lock                       a cache's or state's journal and lock, beside it
"""

from __future__ import annotations

from pathlib import Path

FACE_CACHE = "faces.npz"
INDEX_STATE = "index.sqlite"
CLIP_STORE = "clip.sqlite"
SETS_LOCK = ".facesets.lock"
PLAN = "clusters.json"


def journal_of(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def user_cache(folder: Path, user: str) -> Path:
    return folder / f"{user}.npz"


def user_queue(folder: Path, user: str) -> Path:
    return folder / f"queue-{user}.json"


def user_state(folder: Path, user: str) -> Path:
    return folder / f"state-{user}.json"


def user_plan(folder: Path, user: str) -> Path:
    return folder / f"clusters-{user}.json"


def finalize_record(folder: Path, user: str) -> Path:
    return folder / f"finalize-{user}.json"
