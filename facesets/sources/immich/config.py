"""Which Immich user a label means, and where that user's API key comes from.

``users.json`` (optional) maps labels to Immich user ids and, optionally, key files::

    {"peter": {"id": "8f1c...-...", "key_file": "keys/peter.key"}, "nic": {"id": "..."}}

``key_file`` is relative to the folder of ``users.json``. The key for label ``peter`` is the first of:

1. the environment variable ``IMMICH_API_KEY_PETER`` (the label upper-cased, other characters as ``_``);
2. the ``key_file`` of the label in ``users.json``;
3. the file named by ``IMMICH_API_KEY_FILE``;
4. the environment variable ``IMMICH_API_KEY``.

Each user needs a key of their own: Immich ignores a ``userIds`` filter, so an admin key lists only the
admin's assets. When ``users.json`` gives an id, the key's owner (``/users/me``) must be that user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from ...base.errors import ConfigError
from .client import Secret


@dataclass(frozen=True)
class UserEntry:
    id: str | None = None
    key_file: Path | None = None


def read_users(path: Path) -> dict[str, UserEntry]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ConfigError(f'{path} must map labels to users, like {{"peter": {{"id": "<Immich user id>"}}}}')
    users = {}
    for label, entry in document.items():
        if not isinstance(entry, dict) or not all(isinstance(value, str) for value in entry.values()):
            raise ConfigError(f"{path}: the entry for {label!r} must be an object of strings (id, key_file)")
        key_file = entry.get("key_file")
        users[str(label)] = UserEntry(entry.get("id"), path.parent / key_file if key_file else None)
    return users


def key_variable(label: str) -> str:
    return "IMMICH_API_KEY_" + re.sub(r"[^A-Z0-9]", "_", label.upper())


def resolve_key(label: str, environ: Mapping[str, str], entry: UserEntry | None) -> Secret:
    """The API key for ``label`` (see the module docstring for the order); the message lists what was tried."""
    if environ.get(key_variable(label)):
        return Secret(environ[key_variable(label)].strip())
    if entry is not None and entry.key_file is not None:
        return _key_from_file(entry.key_file, f"users.json key_file of {label!r}")
    if environ.get("IMMICH_API_KEY_FILE"):
        return _key_from_file(Path(environ["IMMICH_API_KEY_FILE"]), "IMMICH_API_KEY_FILE")
    if environ.get("IMMICH_API_KEY"):
        return Secret(environ["IMMICH_API_KEY"].strip())
    raise ConfigError(
        f"no Immich API key for {label!r}: set {key_variable(label)} (or IMMICH_API_KEY), or give a key_file in "
        "users.json or IMMICH_API_KEY_FILE. Create the key as that user in Immich: Account Settings > API Keys"
    )


def _key_from_file(path: Path, origin: str) -> Secret:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file {path} ({origin}): {exc.strerror}") from None
    if not value:
        raise ConfigError(f"the API key file {path} ({origin}) is empty")
    return Secret(value)
