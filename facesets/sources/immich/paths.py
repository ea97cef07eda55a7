"""Where a staged Immich original goes: a safe relative path derived from the untrusted ``originalPath``.

The mapping (documented in the README):

1. ``\\`` counts as a separator; a drive letter (``C:``), a UNC or URL prefix and the leading ``/`` are dropped;
2. empty, ``.`` and ``..`` components are dropped (never resolved), so nothing can climb out;
3. in each component, NUL and control characters and the characters Windows forbids (``<>:"|?*``) become ``_``;
   trailing dots and spaces are trimmed; Windows device names (``CON``, ``NUL``, ``COM1``...) get a ``_`` prefix;
4. each component is cut to 120 UTF-8 bytes (the extension kept), and only the last 8 folders are kept;
5. a path with nothing left becomes ``asset-<id><ext>``.

So ``/mnt/media/photos/2019/a.jpg`` is staged as ``<staging>/<user>/mnt/media/photos/2019/a.jpg``. Two assets
whose paths differ only by case (or that sanitise to the same path) never share a file: the later one in
listing order gets ``~<first 8 characters of its id>`` before its extension (:class:`PathClaims`). Finally
:func:`inside` checks the resolved target is inside the user's folder (symlinks included) before any write.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

MAX_COMPONENT_BYTES = 120
MAX_FOLDERS = 8
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_PREFIX = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://[^/]*|[A-Za-z]:)")
_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def relative_path(original_path: str, asset_id: str) -> str:
    """The safe, relative, ``/``-separated path for an asset (see the module docstring)."""
    text = original_path.replace("\\", "/")
    text = _PREFIX.sub("", text)
    parts = [_clean(part) for part in text.split("/") if part not in ("", ".", "..")]
    parts = [part for part in parts if part]
    if not parts:
        return f"asset-{_clean(asset_id)}{_extension(original_path)}"
    folders, name = parts[:-1][-MAX_FOLDERS:], parts[-1]
    return "/".join([*folders, name])


def _clean(part: str) -> str:
    part = _UNSAFE.sub("_", part).rstrip(" .")
    if part.split(".")[0].upper() in _DEVICES:
        part = "_" + part
    return _cut(part, MAX_COMPONENT_BYTES)


def _cut(part: str, limit: int) -> str:
    if len(part.encode("utf-8")) <= limit:
        return part
    suffix = PurePosixPath(part).suffix
    suffix = suffix if len(suffix.encode("utf-8")) <= 16 else ""
    stem = part[: len(part) - len(suffix)] if suffix else part
    while len((stem + suffix).encode("utf-8")) > limit:
        stem = stem[:-1]
    return stem + suffix


def _extension(original_path: str) -> str:
    suffix = PurePosixPath(original_path.replace("\\", "/")).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def with_tag(path: str, asset_id: str, length: int = 8) -> str:
    """``a/b.jpg`` -> ``a/b~1a2b3c4d.jpg``: the name of an asset whose path another asset already holds."""
    pure = PurePosixPath(path)
    tag = "~" + re.sub(r"[^0-9A-Za-z]", "", asset_id)[:length]
    name = _cut(pure.stem, MAX_COMPONENT_BYTES - len(tag) - len(pure.suffix)) + tag + pure.suffix
    return str(pure.with_name(name))


class PathClaims:
    """Relative paths held by assets, compared case-insensitively (NTFS and APFS ignore case)."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def hold(self, path: str, asset_id: str) -> None:
        self._owner[path.casefold()] = asset_id

    def claim(self, path: str, asset_id: str) -> str:
        """``path`` if free (or already this asset's), else a tagged variant; the result is held."""
        candidate, attempt = path, 0
        while self._owner.get(candidate.casefold(), asset_id) != asset_id:
            attempt += 1
            tag = asset_id if attempt == 1 else f"{asset_id}{attempt}"
            candidate = with_tag(path, tag, 8 if attempt == 1 else 64)
        self.hold(candidate, asset_id)
        return candidate

    def release(self, path: str, asset_id: str) -> None:
        if self._owner.get(path.casefold()) == asset_id:
            del self._owner[path.casefold()]


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refused (``ValueError``) if it resolves outside ``root``."""
    target = root / relative
    if not target.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{relative!r} resolves outside {root}")
    return target
