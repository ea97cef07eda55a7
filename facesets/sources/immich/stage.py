"""The Immich stage: list a user's assets, keep those with a usable face, download each original once,
dedup, and append the new files to the queue the embed stage reads. Resumable and safe to kill.

Stages, each a small function; concurrency lives in :meth:`Stager.run` only:

    listing (paged, main thread) -> classify (main thread: free filters, checksum dedup, path claim)
        -> fetch (worker threads: faces, then download, verify, rename) -> settle (main thread, listing order:
        BLAKE3 dedup, state, queue) -> commit every ``commit_every`` settled assets (queue, then state journal)

At most ``2 x workers`` assets are in flight, so memory does not grow with the library. Settling in listing
order makes every decision (which duplicate is kept, which path a case-twin gets) independent of timing, so
a resumed run ends with the same queue and files as an undisturbed one. A file renamed into place but not yet
committed (a kill in between) is adopted on the next run after checking its SHA-1, with no request.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ...artifacts.layout import user_queue, user_state
from ...artifacts.queue import QueueEntry, append_entries
from ...artifacts.records import Source, SourceKind
from ...base.errors import CacheError, ConfigError, ImmichAuthError, ImmichUnavailableError, StateError
from ...base.messages import printable
from ...base.paths import to_windows
from ...base.progress import Progress, ProgressFactory
from .client import (
    Asset,
    AssetType,
    ClientOptions,
    Download,
    ImmichClient,
    NotFoundError,
    Secret,
    TransientError,
    hashed_copy,
)
from .paths import PathClaims, inside, relative_path, with_tag
from .state import Outcome, SeenAsset, StageState

log = logging.getLogger(__name__)
USER_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ASSET_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Immich's own generated files, which external libraries sometimes index as assets.
GENERATED = re.compile(r"(^|/)(thumbs|encoded-video)/|-(preview|thumbnail|fullsize)\.(jpe?g|webp)$", re.IGNORECASE)


@dataclass(frozen=True)
class StageConfig:
    user: str
    url: str
    key: Secret
    staging: Path
    caches: Path | None = None
    queue: Path | None = None  # default: <staging>/queue-<user>.json
    expected_owner: str | None = None  # the Immich user id users.json gives for this label
    workers: int = 8
    min_face: float = 90.0
    dry_run: bool = False
    page_size: int = 1000
    commit_every: int = 200
    client: ClientOptions = field(default_factory=ClientOptions)

    @property
    def user_root(self) -> Path:
        return self.staging.absolute() / self.user

    @property
    def queue_path(self) -> Path:
        return self.queue or user_queue(self.staging, self.user)

    @property
    def state_path(self) -> Path:
        return user_state(self.staging, self.user)

    @property
    def partial_dir(self) -> Path:
        return self.staging.absolute() / f".partial-{self.user}"


class Skip(StrEnum):
    """Why an asset is passed over while the listing is read (each value is its counter in the summary)."""

    BAD_ID = "skipped_bad_id"
    ALREADY_DONE = "already_done"
    VIDEO = "skipped_video"
    NOT_IMAGE = "skipped_not_image"
    TRASHED = "skipped_trashed"
    OFFLINE = "skipped_offline"
    GENERATED = "skipped_generated"
    BY_CHECKSUM = "skipped_by_checksum"


@dataclass
class StageStats:
    total_assets_seen: int = 0
    staged_count: int = 0
    deduped_against_existing: int = 0
    deduped_against_staged: int = 0
    skipped_no_big_face: int = 0
    skipped_no_faces: int = 0
    skipped_download_error: int = 0
    elapsed: float = 0.0
    skipped_faces_error: int = 0
    skipped_gone: int = 0
    skipped_unsafe_path: int = 0
    adopted: int = 0
    would_stage: int = 0
    downloaded_bytes: int = 0
    complete: bool = False
    skips: dict[Skip, int] = field(default_factory=lambda: dict.fromkeys(Skip, 0))

    def as_dict(self) -> dict[str, Any]:
        counts = {skip.value: count for skip, count in self.skips.items()}
        fields = {name: value for name, value in asdict(self).items() if name != "skips"}
        return {**fields, **counts, "elapsed": round(self.elapsed, 2)}


class Fetch(StrEnum):
    DOWNLOADED = "downloaded"
    ADOPTED = "adopted"
    NO_FACES = "no_faces"
    NO_BIG_FACE = "no_big_face"
    WOULD_STAGE = "would_stage"
    FACES_ERROR = "faces_error"
    DOWNLOAD_ERROR = "download_error"
    GONE = "gone"
    UNSAFE = "unsafe"  # the target resolves outside the user's folder (a symlink planted in staging)


@dataclass(frozen=True)
class Candidate:
    asset: Asset
    path: str  # relative to the user's folder, claimed
    page: int


@dataclass(frozen=True)
class Fetched:
    candidate: Candidate
    result: Fetch
    path: str = ""  # where the file lies (the claimed path, or a tagged one if a stranger's file held it)
    download: Download | None = None
    reason: str = ""


@dataclass
class Known:
    """What is already staged or cached: checksums (before download) and BLAKE3 hashes (after)."""

    checksums: dict[str, str] = field(default_factory=dict)  # base64 SHA-1 -> what holds it
    cached_hashes: set[str] = field(default_factory=set)
    staged_hashes: dict[str, str] = field(default_factory=dict)  # BLAKE3 -> staged path


def run_stage(config: StageConfig, progress: ProgressFactory | None = None) -> StageStats:
    """Stage one user's library; see the module docstring. Raises on fatal problems after saving state."""
    if not USER_LABEL.match(config.user):
        raise ConfigError(f"user label {config.user!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    if not config.dry_run:
        config.staging.mkdir(parents=True, exist_ok=True)
    state = StageState.open(config.state_path, config.user, read_only=config.dry_run)
    try:
        with ImmichClient(config.url, config.key, _client_options(config)) as client:
            _check_owner(config, client, state)
            stager = Stager(config, state, client, progress(0) if progress else None)  # the total grows by page
            try:
                return stager.run()
            except ImmichUnavailableError as exc:
                raise ImmichUnavailableError(
                    f"Immich at {client.base} stopped answering: {exc}. Progress is saved in {state.path}; "
                    "run the same command again to resume"
                ) from None
    finally:
        state.close()


def _client_options(config: StageConfig) -> ClientOptions:
    return replace(config.client, connections=config.workers)


def _check_owner(config: StageConfig, client: ImmichClient, state: StageState) -> None:
    me = client.me()
    if config.expected_owner and me.id != config.expected_owner:
        raise ImmichAuthError(
            f"the API key for {config.user!r} belongs to {me.name or me.email} ({me.id}), but users.json maps "
            f"{config.user!r} to {config.expected_owner}: use that user's own key (an admin key cannot list "
            "other users' assets)"
        )
    if state.owner_id and state.owner_id != me.id:
        raise StateError(
            f"{state.path} was made for Immich user {state.owner_id}, but the key belongs to {me.id}: "
            "use the same user's key, or another --staging folder"
        )
    state.owner_id, state.server = me.id, client.base
    log.info("staging the library of %s (%s)", me.name or me.email, me.id)


class Stager:
    def __init__(self, config: StageConfig, state: StageState, client: ImmichClient, bar: Progress | None) -> None:
        self.config = config
        self.state = state
        self.client = client
        self.bar = bar
        self.stats = StageStats()
        self.known = _known(state, config.caches)
        self.claims = PathClaims()
        for asset_id, seen in state.seen.items():
            self.claims.hold(seen.path, asset_id)
        for asset_id, path in state.pending.items():
            self.claims.hold(path, asset_id)
        self._entries: list[QueueEntry] = []
        self._unsaved = 0

    def run(self) -> StageStats:
        started = time.monotonic()
        if not self.config.dry_run:
            shutil.rmtree(self.config.partial_dir, ignore_errors=True)
            self.config.partial_dir.mkdir(parents=True)
        window: deque[tuple[int, Future[Fetched]]] = deque()
        first = page = self._first_page()
        try:
            with ThreadPoolExecutor(self.config.workers, thread_name_prefix="stage") as pool:
                try:
                    for page, assets in self.client.pages(first, self.config.page_size):
                        self._grow(len(assets))
                        for asset in assets:
                            candidate = self.classify(asset, page)
                            if candidate is not None:
                                window.append((page, pool.submit(self.fetch, candidate)))
                            self._drain(window, limit=2 * self.config.workers, page=page)
                    self._drain(window, limit=0, page=page)
                    self.stats.complete = True
                finally:
                    for _, future in window:
                        future.cancel()
                    self._drain(window, limit=None, page=page)
        finally:
            self.stats.elapsed = time.monotonic() - started
            self._commit(None if self.stats.complete else self._cursor(window, page), final=True)
            if self.bar:
                self.bar.close()
        return self.stats

    def _first_page(self) -> int:
        """The cursor of a stopped run, unless assets were left for a retry: then page 1, so that they are
        met again in listing order and every decision matches an undisturbed run."""
        if self.state.cursor and not self.state.pending:
            log.info("resuming the listing at page %d", self.state.cursor)
            return self.state.cursor
        return 1

    # -- classify (main thread) --------------------------------------------------------------------------

    def classify(self, asset: Asset, page: int) -> Candidate | None:
        """Free filters and the checksum dedup; a candidate gets its path claimed here, in listing order."""
        self.stats.total_assets_seen += 1
        skip = self._skip_reason(asset)
        if skip is not None:
            self.stats.skips[skip] += 1
            if skip is not Skip.ALREADY_DONE and not self.config.dry_run:
                self.state.forget_pending(asset.id)  # left for a retry, since trashed or the like
            self._advance()
            return None
        if asset.checksum:
            self.known.checksums[asset.checksum] = asset.id
        path = self.state.pending.get(asset.id) or relative_path(asset.original_path, asset.id)
        return Candidate(asset, self.claims.claim(path, asset.id), page)

    def _skip_reason(self, asset: Asset) -> Skip | None:
        if not ASSET_ID.match(asset.id):  # untrusted: it names files and URLs, so only a UUID passes
            log.warning("skipping an asset whose id is not a UUID: %s", printable(asset.id[:80]))
            return Skip.BAD_ID
        if asset.id in self.state.seen:
            return Skip.ALREADY_DONE
        if asset.type is AssetType.VIDEO:
            return Skip.VIDEO
        if asset.type is not AssetType.IMAGE:
            return Skip.NOT_IMAGE
        if asset.is_trashed:
            return Skip.TRASHED
        if asset.is_offline:
            return Skip.OFFLINE
        if GENERATED.search(asset.original_path.replace("\\", "/")):
            return Skip.GENERATED
        if asset.checksum and asset.checksum in self.known.checksums:
            log.info("skipping %s: same checksum as %s", asset.id, self.known.checksums[asset.checksum])
            return Skip.BY_CHECKSUM
        return None

    # -- fetch (worker threads) --------------------------------------------------------------------------

    def fetch(self, candidate: Candidate) -> Fetched:
        asset, path = candidate.asset, candidate.path
        try:
            target = inside(self.config.user_root, path)
            if not self.config.dry_run and target.is_file():
                existing = _file_download(target)
                if existing.sha1 == asset.checksum:
                    return Fetched(candidate, Fetch.ADOPTED, path, existing)
                path = with_tag(path, asset.id)  # a file we did not stage: never overwritten
                target = inside(self.config.user_root, path)
        except ValueError as exc:
            return Fetched(candidate, Fetch.UNSAFE, path, reason=str(exc))
        try:
            faces = self.client.faces(asset.id)
        except NotFoundError as exc:
            return Fetched(candidate, Fetch.GONE, path, reason=str(exc))
        except TransientError as exc:
            return Fetched(candidate, Fetch.FACES_ERROR, path, reason=str(exc))
        if not faces:
            return Fetched(candidate, Fetch.NO_FACES, path)
        if max(face.short_side(asset.width, asset.height) for face in faces) < self.config.min_face:
            return Fetched(candidate, Fetch.NO_BIG_FACE, path)
        if self.config.dry_run:
            return Fetched(candidate, Fetch.WOULD_STAGE, path)
        return self._download(candidate, path, target)

    def _download(self, candidate: Candidate, path: str, target: Path) -> Fetched:
        asset = candidate.asset
        partial = self.config.partial_dir / f"{asset.id}.part"
        reason = ""
        for _ in range(2):  # a checksum mismatch gets one more full download
            try:
                download = self.client.download(asset.id, partial)
                if download.sha1 == asset.checksum or not asset.checksum:  # no checksum: BLAKE3 dedup only
                    _fsync(partial)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial.replace(target)
                    return Fetched(candidate, Fetch.DOWNLOADED, path, download)
            except NotFoundError as exc:
                partial.unlink(missing_ok=True)
                return Fetched(candidate, Fetch.GONE, path, reason=str(exc))
            except TransientError as exc:
                partial.unlink(missing_ok=True)
                return Fetched(candidate, Fetch.DOWNLOAD_ERROR, path, reason=str(exc))
            except OSError:  # the disk is full, say: the run stops, and leaves no partial file taking space
                partial.unlink(missing_ok=True)
                raise
            reason = f"SHA-1 {download.sha1} differs from Immich's checksum {asset.checksum}"
        partial.unlink(missing_ok=True)
        return Fetched(candidate, Fetch.DOWNLOAD_ERROR, path, reason=reason + " (the file changed on the server?)")

    # -- settle (main thread, listing order) -------------------------------------------------------------

    def _drain(self, window: deque[tuple[int, Future[Fetched]]], limit: int | None, page: int) -> None:
        """Settle finished fetches in order; block while more than ``limit`` are in flight (``None``: settle
        only those already done, stopping at the first unfinished, cancelled or failed one)."""
        while window:
            head = window[0][1]
            if limit is None and (not head.done() or head.cancelled() or head.exception() is not None):
                return
            if limit is not None and len(window) <= limit and not head.done():
                return
            self.settle(head.result())
            window.popleft()
            if self._unsaved >= self.config.commit_every:
                self._commit(self._cursor(window, page))

    def settle(self, fetched: Fetched) -> None:
        asset, path = fetched.candidate.asset, fetched.path
        self._advance()
        if fetched.path != fetched.candidate.path:
            self.claims.release(fetched.candidate.path, asset.id)
            self.claims.hold(path, asset.id)
        if fetched.result in (Fetch.DOWNLOADED, Fetch.ADOPTED):
            assert fetched.download is not None
            self._settle_file(asset, path, fetched.download, adopted=fetched.result is Fetch.ADOPTED)
        elif fetched.result in (Fetch.NO_FACES, Fetch.NO_BIG_FACE):
            outcome = Outcome.NO_FACES if fetched.result is Fetch.NO_FACES else Outcome.NO_BIG_FACE
            self.stats.skipped_no_faces += outcome is Outcome.NO_FACES
            self.stats.skipped_no_big_face += outcome is Outcome.NO_BIG_FACE
            self._record(asset.id, SeenAsset(outcome, path, asset.checksum))
        elif fetched.result is Fetch.WOULD_STAGE:
            self.stats.would_stage += 1
        elif fetched.result is Fetch.UNSAFE:
            self.stats.skipped_unsafe_path += 1
            log.warning("skipping %s: %s", asset.id, fetched.reason)
        elif fetched.result is Fetch.GONE:
            self.stats.skipped_gone += 1
            self.claims.release(path, asset.id)
            self.state.forget_pending(asset.id)
            log.info("skipping %s: gone from the server since it was listed (%s)", asset.id, fetched.reason)
        else:
            self._defer(fetched)

    def _settle_file(self, asset: Asset, path: str, download: Download, adopted: bool) -> None:
        target = inside(self.config.user_root, path)
        twin = "cache" if download.blake3 in self.known.cached_hashes else self.known.staged_hashes.get(download.blake3)
        if twin is not None:
            target.unlink(missing_ok=True)
            self.stats.deduped_against_existing += twin == "cache"
            self.stats.deduped_against_staged += twin != "cache"
            self._record(asset.id, SeenAsset(Outcome.DUPLICATE, path, asset.checksum, download.blake3, 0, twin))
            return
        self.known.staged_hashes[download.blake3] = path
        self.stats.staged_count += 1
        self.stats.adopted += adopted
        self.stats.downloaded_bytes += 0 if adopted else download.size
        seen = SeenAsset(Outcome.STAGED, path, asset.checksum, download.blake3, download.size)
        self._record(asset.id, seen)
        source = Source(SourceKind.IMMICH, "", self.config.user, asset.id, asset.owner_id, asset.checksum)
        name = str(target)
        self._entries.append(QueueEntry(name, to_windows(name), download.blake3, download.size, source))

    def _defer(self, fetched: Fetched) -> None:
        asset = fetched.candidate.asset
        if fetched.result is Fetch.FACES_ERROR:
            self.stats.skipped_faces_error += 1
        else:
            self.stats.skipped_download_error += 1
        log.warning("skipping %s (%s): %s; the next run retries it", asset.id, fetched.path, fetched.reason)
        if not self.config.dry_run:
            self.state.defer(asset.id, fetched.path)
            self._unsaved += 1

    def _record(self, asset_id: str, seen: SeenAsset) -> None:
        if not self.config.dry_run:
            self.state.settle(asset_id, seen)
            self._unsaved += 1

    # -- commit ------------------------------------------------------------------------------------------

    def _cursor(self, window: deque[tuple[int, Future[Fetched]]], page: int) -> int:
        """The page to resume from: that of the first asset not settled yet."""
        return window[0][0] if window else page

    def _commit(self, cursor: int | None, final: bool = False) -> None:
        """Queue first, then state: a kill in between leaves queued files that the next run adopts."""
        if self.config.dry_run:
            return
        if self._entries:
            append_entries(self.config.queue_path, self._entries)
            self._entries = []
        elif final and not self.config.queue_path.exists():
            append_entries(self.config.queue_path, [])
        self.state.commit(cursor)
        self._unsaved = 0
        if final:
            if cursor is None:
                self.state.add_run({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **self.stats.as_dict()})
            self.state.compact()
            shutil.rmtree(self.config.partial_dir, ignore_errors=True)

    def _grow(self, count: int) -> None:
        if self.bar:
            self.bar.grow(count)

    def _advance(self) -> None:
        if self.bar:
            self.bar.advance()


def _known(state: StageState, caches: Path | None) -> Known:
    known = Known()
    for asset_id, seen in state.seen.items():
        if seen.checksum:
            known.checksums[seen.checksum] = asset_id
        if seen.outcome is Outcome.STAGED:
            known.staged_hashes[seen.hash] = seen.path
    if caches is not None and caches.is_dir():
        _read_caches(caches, known)
    return known


def _read_caches(caches: Path, known: Known) -> None:
    from ...artifacts.cache import load_cache  # numpy: only when there are caches to read

    paths = {*caches.glob("*.npz"), *(folder.with_suffix("") for folder in caches.glob("*.npz.journal"))}
    for path in sorted(paths):
        try:
            data = load_cache(path, images_only=True)
        except CacheError as exc:
            log.warning("not deduplicating against %s: %s", path, exc)
            continue
        for record in data.images:
            if record.content_hash:
                known.cached_hashes.add(record.content_hash)
            checksum = record.source.checksum
            if checksum:
                known.checksums[checksum] = f"cache {path.name}"


def _file_download(path: Path) -> Download:
    with open(path, "rb") as handle:
        return hashed_copy(iter(lambda: handle.read(1 << 20), b""), None)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
