"""Linux (WSL) <-> Windows forms of a path.

The Linux side stages files and writes the queue; the Windows side embeds them. Each file therefore has
two names, and the mapping is:

    /mnt/x/a/b.jpg          <->  X:\\a\\b.jpg          (a WSL drive mount; the drive letter is upper-cased)
    //server/share/a.jpg    <->  \\\\server\\share\\a.jpg  (UNC)

Any other Linux path (``/home/...``) has no Windows drive form: :func:`to_windows` returns ``None`` for it
and :func:`require_windows` raises :class:`PathMappingError` naming the path.
"""

from __future__ import annotations

import re

from .errors import PathMappingError

_MNT = re.compile(r"^/mnt/([A-Za-z])(?:/(.*))?$")
_DRIVE = re.compile(r"^([A-Za-z]):(?:[\\/](.*))?$")


def to_windows(linux_path: str) -> str | None:
    """The Windows form of a Linux path, or ``None`` when it has none."""
    match = _MNT.match(linux_path)
    if match:
        drive, rest = match.group(1).upper(), match.group(2) or ""
        return f"{drive}:\\" + rest.replace("/", "\\")
    if linux_path.startswith("//") and not linux_path.startswith("///"):
        return "\\\\" + linux_path[2:].replace("/", "\\")
    return None


def to_linux(windows_path: str) -> str | None:
    """The Linux (WSL) form of a Windows path, or ``None`` when it has none."""
    match = _DRIVE.match(windows_path)
    if match:
        drive, rest = match.group(1).lower(), match.group(2) or ""
        tail = rest.replace("\\", "/")
        return f"/mnt/{drive}/{tail}" if tail else f"/mnt/{drive}"
    if windows_path.startswith("\\\\"):
        return "//" + windows_path[2:].replace("\\", "/")
    return None


def require_windows(linux_path: str) -> str:
    mapped = to_windows(linux_path)
    if mapped is None:
        raise PathMappingError(
            f"{linux_path} has no Windows form: only /mnt/<drive>/... and //server/share/... paths can be "
            "read by the Windows embed worker. Keep the photos on a Windows drive (for example /mnt/d/photos)."
        )
    return mapped


def valid_utf8(name: str) -> bool:
    """Whether a file name is text: undecodable bytes of a name arrive as surrogates, which UTF-8 cannot hold."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
