"""``facesets immich stage``: staging an Immich library for the embed stage."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..base.errors import ConfigError
from .options import bar, emit, json_option


@click.group()
def immich() -> None:
    """Stage photos from an Immich server (IMMICH_URL, a per-user API key)."""


@immich.command("stage")
@click.option("--user", required=True, help="Label of the user whose library is staged (their key is used).")
@click.option("--workers", type=click.IntRange(1, 128), default=8, show_default=True, help="Parallel requests.")
@click.option(
    "--min-face",
    type=click.FloatRange(min=0),
    default=90.0,
    show_default=True,
    help="Keep an asset only if a face's short side reaches this many pixels of the original.",
)
@click.option(
    "--staging",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("staging"),
    show_default=True,
    help="Folder for <user>/ (the originals), queue-<user>.json and state-<user>.json.",
)
@click.option(
    "--caches",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("caches"),
    show_default=True,
    help="Face caches (*.npz) to deduplicate against; a missing folder means none.",
)
@click.option(
    "--queue",
    "queue_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="queue.json to append to (default: <staging>/queue-<user>.json).",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("users.json"),
    show_default=True,
    help="Labels -> Immich user ids (and key files); optional.",
)
@click.option("--url", envvar="IMMICH_URL", help="Immich server URL (default: $IMMICH_URL), e.g. http://host:2283.")
@click.option("--dry-run", is_flag=True, help="List and filter (faces included) without downloading or saving.")
@click.option(
    "--page-size", type=click.IntRange(1, 1000), default=1000, show_default=True, help="Assets per listing page."
)
@click.option(
    "--commit-every",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Settled assets per state commit: a kill repeats at most this many assets' requests.",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds per request.")
@click.option("--retries", type=click.IntRange(min=0), default=4, show_default=True, help="Retries of a failed call.")
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Seconds before the first retry, doubled for each next one.",
)
@json_option
def immich_stage(
    user: str,
    workers: int,
    min_face: float,
    staging: Path,
    caches: Path,
    queue_path: Path | None,
    users_file: Path,
    url: str | None,
    dry_run: bool,
    page_size: int,
    commit_every: int,
    timeout: float,
    retries: int,
    retry_delay: float,
    as_json: bool,
) -> None:
    """List USER's Immich assets, keep those with a big enough face, download each original once, dedup,
    and append the new files to the queue.

    Resumable: state-<user>.json remembers what is settled; after a crash, Ctrl-C or an outage (exit 2), run
    the same command again. The API key comes from IMMICH_API_KEY_<USER>, users.json, IMMICH_API_KEY_FILE or
    IMMICH_API_KEY (see the README); it is never written anywhere.

    Example: facesets immich stage --user peter --workers 8 --min-face 90
    """
    from ..sources.immich.client import ClientOptions
    from ..sources.immich.config import read_users, resolve_key
    from ..sources.immich.stage import StageConfig, run_stage

    if not url:
        raise ConfigError("no Immich URL: set IMMICH_URL (like http://immich.local:2283) or pass --url")
    users = read_users(users_file) if users_file.exists() else {}
    entry = users.get(user)
    if users and entry is None:
        raise ConfigError(f"{users_file} has no user {user!r} (it has: {', '.join(sorted(users))})")
    config = StageConfig(
        user=user,
        url=url,
        key=resolve_key(user, os.environ, entry),
        staging=staging,
        caches=caches,
        queue=queue_path,
        expected_owner=entry.id if entry else None,
        workers=workers,
        min_face=min_face,
        dry_run=dry_run,
        page_size=page_size,
        commit_every=commit_every,
        client=ClientOptions(timeout=timeout, retries=retries, backoff=retry_delay),
    )
    emit(run_stage(config, progress=bar("stage", "asset", as_json)).as_dict(), as_json)
