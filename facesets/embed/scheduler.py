"""``facesets embed --scheduler``: the embed stage on Dask distributed, the driver's side.

    queue -> [skip what the cache holds] -> shards of --shard-size entries ─▶ Dask workers (embed_shard)
          ◀─ outcomes, shard by shard, in any order ─ cache journal (this process: its only writer)

The driver never embeds: it cuts the queue into shards (entries with the same queued content hash in one
shard, so that a duplicate is found where its twin is), keeps a bounded number of them in flight (memory does
not grow with the queue), and records each shard's outcomes as they come back, flushing the journal every
``--flush-every`` images. An image is recorded once, by path, and bytes already recorded under another path are
a duplicate, whatever order the shards finish in, so a shard computed twice changes nothing.

Faults: Dask recomputes the shards of a worker that died; a shard that kills workers again and again is split
until the one image that does it is recorded as an error. A file no worker can see comes back ``missing`` and
is sent as bytes from here (``--ship-bytes`` sends every image so). A worker with another model pack stops the
run (:class:`WorkerRefusedError`); the scheduler going away stops it with exit code 2 (:class:`SchedulerError`);
both, and Ctrl-C, flush what came back first, so the same command continues.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..artifacts.cache import CacheWriter
from ..artifacts.queue import QueueEntry, read_queue
from ..base.errors import CacheError, ImageLoadError, SchedulerError, WorkerRefusedError
from ..base.pipeline import read_image
from ..base.progress import Progress, ProgressFactory
from ..models.packs import PackIdentity, resolve_pack
from .queue import EmbedConfig, EmbedStats, Outcome, embedded_hashes, record, select_todo
from .shards import PathMap, Shard, ShardResult, WorkerSpec, embed_shard

if TYPE_CHECKING:
    from distributed import Client, Future, as_completed

log = logging.getLogger(__name__)

SHIP_SHARD_BYTES = 32 << 20  # a shard of shipped bytes holds at most this much (or --shard-size images)
WINDOW_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class DistributedConfig:
    scheduler: str  # tcp://host:8786
    shard_size: int = 64
    resources: tuple[tuple[str, float], ...] = ()  # each shard needs these worker resources (dml=1)
    maps: tuple[PathMap, ...] = ()
    ship_bytes: bool = False  # send every image's bytes from the driver
    connect_timeout: float = 10.0


@dataclass
class WorkerStats:
    images: int = 0
    faces: int = 0
    errors: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        rate = self.images / self.seconds if self.seconds else 0.0
        return {
            "images": self.images,
            "faces": self.faces,
            "errors": self.errors,
            "seconds": round(self.seconds, 1),
            "img_s": round(rate, 2),
        }


@dataclass
class DistributedStats(EmbedStats):
    scheduler: str = ""
    shards: int = 0
    resubmitted_shards: int = 0  # lost ones again, and the halves of a shard whose worker died each time
    shipped: int = 0  # images whose bytes the driver sent
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        data = super().as_dict()
        data["workers"] = {name: worker.as_dict() for name, worker in sorted(self.workers.items())}
        return data


def parse_resources(text: str) -> tuple[tuple[str, float], ...]:
    """``dml=1,gpu=1`` as (name, amount) pairs (Dask's ``--resources`` syntax)."""
    pairs = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, amount = part.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not equals or not name.strip() or value <= 0:
            raise ValueError(f"{part!r} is not NAME=AMOUNT (e.g. dml=1)")
        pairs.append((name.strip(), value))
    return tuple(pairs)


def run_distributed(
    config: EmbedConfig, spread: DistributedConfig, progress: ProgressFactory | None = None
) -> DistributedStats:
    """Embed every queued image not in the cache yet on the workers of ``spread.scheduler``."""
    started = time.monotonic()
    entries = read_queue(config.queue)
    identity = resolve_pack(config.model_dir, config.model_pack).identity()
    writer = CacheWriter(config.cache, identity)
    stats = DistributedStats(queued=len(entries), scheduler=spread.scheduler)
    try:
        todo = select_todo(entries, writer, config, stats)
        bar = progress(len(todo)) if progress else None
        if todo:
            with _connect(spread) as client:
                _Driver(client, config, spread, identity, writer, stats, bar).run(todo)
        if bar:
            bar.close()
        writer.close(compact=True)
    except BaseException:
        with contextlib.suppress(CacheError):
            writer.flush()  # what came back is kept: the same command goes on from there
        writer.abandon()
        raise
    stats.elapsed = round(time.monotonic() - started, 3)
    return stats


class _Driver:
    """One run's shards: submitted with a bounded window, recorded as they come back."""

    def __init__(
        self,
        client: Client,
        config: EmbedConfig,
        spread: DistributedConfig,
        identity: PackIdentity,
        writer: CacheWriter,
        stats: DistributedStats,
        bar: Progress | None,
    ) -> None:
        from distributed import as_completed

        self.client, self.config, self.spread, self.identity = client, config, spread, identity
        self.writer, self.stats, self.bar = writer, stats, bar
        self.spec = WorkerSpec.of(config)
        self.claimed = set(embedded_hashes(writer))  # bytes recorded with their faces: seen again, a duplicate
        self.recorded: set[str] = set()
        self.running: dict[str, Shard] = {}  # future key -> its shard
        self.completed: as_completed = as_completed(loop=client.loop)
        self.numbers = itertools.count(1)
        self.run_id = uuid.uuid4().hex[:12]
        self.to_ship: list[QueueEntry] = []
        self._threads, self._threads_at = 1, 0.0  # worker threads on the scheduler, asked every few seconds

    def run(self, todo: list[QueueEntry]) -> None:
        self._say_who_is_there()
        shards = Pending(todo)
        self._fill(shards)
        for future in self.completed:
            shard = self.running.pop(str(future.key))
            result = self._result(future, shard)
            if result is not None:
                self._take(result)
            self._fill(shards)

    def _fill(self, pending: Pending) -> None:
        while len(self.running) < self._capacity():
            if self.to_ship:
                batch, self.to_ship = Pending(self.to_ship), []
                while entries := batch.take(self.spread.shard_size):
                    self._submit_shipped(entries)
                continue
            entries = pending.take(guided_size(pending.remaining, self._threads, self.spread.shard_size))
            if not entries:
                return
            if self.spread.ship_bytes:
                self._submit_shipped(entries)
            else:
                self._submit(entries)

    def _capacity(self) -> int:
        """Two shards per worker thread in flight (at least two): workers never wait, memory stays bounded."""
        now = time.monotonic()
        if now - self._threads_at > WINDOW_REFRESH_SECONDS:
            self._threads = sum(self.client.nthreads().values())
            self._threads_at = now
        return max(2, 2 * self._threads)

    def _submit(self, entries: tuple[QueueEntry, ...], data: dict[str, bytes] | None = None) -> None:
        known = frozenset(entry.content_hash for entry in entries if entry.content_hash in self.claimed)
        shard = Shard(next(self.numbers), entries, self.spec, self.identity, known, self.spread.maps, data or {})
        future = self.client.submit(
            embed_shard,
            shard,
            key=f"facesets-embed-{self.run_id}-{shard.number}",
            resources=dict(self.spread.resources) or None,
            pure=False,
        )
        self.running[str(future.key)] = shard
        self.completed.add(future)
        self.stats.shards += 1

    def _submit_shipped(self, entries: tuple[QueueEntry, ...]) -> None:
        """Read ``entries`` here and send their bytes (shards of at most :data:`SHIP_SHARD_BYTES`); an image
        this machine cannot read either is recorded with its reason."""
        data: dict[str, bytes] = {}
        batch: list[QueueEntry] = []
        for entry in entries:
            try:
                data[entry.path] = read_image(entry.local_path(), self.config.max_bytes)
            except ImageLoadError as exc:
                self._record(Outcome(entry, size=entry.size, error=exc.reason))
                continue
            batch.append(entry)
            self.stats.shipped += 1
            if sum(len(value) for value in data.values()) >= SHIP_SHARD_BYTES:
                self._submit(tuple(batch), data)
                data, batch = {}, []
        if batch:
            self._submit(tuple(batch), data)

    def _result(self, future: Future[ShardResult], shard: Shard) -> ShardResult | None:
        """The shard's result; None when it was submitted again: lost, or split after it killed its workers
        (Dask itself recomputes a shard whose worker died, and gives up after three such deaths)."""
        from distributed import KilledWorker

        if future.status == "finished":
            result: ShardResult = future.result()
            return result
        if self.client.status != "running":
            raise SchedulerError(
                f"the Dask scheduler at {self.spread.scheduler} went away; what came back is in the cache. "
                "Start the scheduler (and its workers) again and run the same command to continue"
            )
        error = future.exception() if future.status == "error" else None
        if error is not None and not isinstance(error, KilledWorker):
            raise SchedulerError(f"a shard failed on its worker: {type(error).__name__}: {error}")
        if error is None:
            self.stats.resubmitted_shards += 1
            self._submit(shard.entries, shard.data)
        elif len(shard.entries) > 1:
            half = len(shard.entries) // 2
            for part in (shard.entries[:half], shard.entries[half:]):
                self.stats.resubmitted_shards += 1
                self._submit(part, {entry.path: shard.data[entry.path] for entry in part if entry.path in shard.data})
        else:
            entry = shard.entries[0]
            self._record(Outcome(entry, size=entry.size, error="its worker died embedding it, each time it was tried"))
        return None

    def _take(self, result: ShardResult) -> None:
        if result.refused:
            raise WorkerRefusedError(result.refused)
        worker = self.stats.workers.setdefault(result.worker, WorkerStats())
        worker.seconds += result.seconds
        for outcome in result.outcomes:
            if outcome.missing:
                self.to_ship.append(outcome.entry)  # this worker cannot see the file: send its bytes
                continue
            worker.images += 1
            worker.faces += outcome.faces
            worker.errors += 1 if outcome.error else 0
            self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        path = outcome.entry.path
        if path in self.recorded:
            return  # computed twice (a retried shard): recorded once
        self.recorded.add(path)
        if outcome.new and outcome.digest in self.claimed:
            outcome = replace(outcome, new=False, meta=outcome.meta[:0], vectors=outcome.vectors[:0])
        elif outcome.new and not outcome.transient:
            self.claimed.add(outcome.digest)
        record(outcome, self.writer, self.stats)
        if self.writer.pending_images >= self.config.flush_every:
            self.writer.flush()
        if self.bar:
            self.bar.advance()

    def _say_who_is_there(self) -> None:
        workers: dict[str, Any] = self.client.scheduler_info().get("workers", {})
        if not workers:
            log.warning(
                "no worker has joined %s yet: the shards wait for one (`dask worker %s --nthreads 2`)",
                self.spread.scheduler,
                self.spread.scheduler,
            )
            return
        needed = dict(self.spread.resources)
        fitting = [w for w in workers.values() if all(w.get("resources", {}).get(k, 0) >= v for k, v in needed.items())]
        if needed and not fitting:
            wanted = ",".join(f"{k}={v:g}" for k, v in needed.items())
            log.warning(
                "no worker of %s offers --resources %s yet: the shards wait for one", self.spread.scheduler, wanted
            )
        log.info("%d workers at %s", len(workers), self.spread.scheduler)


class Pending:
    """The entries not submitted yet, as groups: entries that share a queued content hash form one group, which
    goes into one shard (so that a twin is a duplicate where it is read, as in a local run)."""

    def __init__(self, entries: list[QueueEntry]) -> None:
        groups: dict[str, list[QueueEntry]] = {}
        self.groups: deque[list[QueueEntry]] = deque()
        for entry in entries:
            if entry.content_hash and entry.content_hash in groups:
                groups[entry.content_hash].append(entry)
                continue
            group = [entry]
            self.groups.append(group)
            if entry.content_hash:
                groups[entry.content_hash] = group
        self.remaining = len(entries)

    def take(self, size: int) -> tuple[QueueEntry, ...]:
        """The next shard of about ``size`` entries, in queue order (whole groups); empty when none is left."""
        shard: list[QueueEntry] = []
        while self.groups and len(shard) < size:
            shard.extend(self.groups.popleft())
        self.remaining -= len(shard)
        return tuple(shard)


def guided_size(remaining: int, threads: int, largest: int) -> int:
    """The size of the next shard: ``largest`` while much is left, then a quarter of an even share of what
    is left per worker thread, so that the last shards are small and no worker idles while another finishes
    a big one (guided self-scheduling)."""
    return max(1, min(largest, remaining // (4 * max(1, threads))))


@contextlib.contextmanager
def _connect(spread: DistributedConfig) -> Iterator[Client]:
    from distributed import Client

    _quiet_dask()  # after the import: importing distributed sets its loggers' levels
    try:
        client = Client(spread.scheduler, timeout=spread.connect_timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {spread.scheduler} ({type(exc).__name__}: {exc}). Start one with "
            "`dask scheduler` and workers with `dask worker ADDRESS --nthreads 2`, then run the same command"
        ) from exc
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


def _quiet_dask() -> None:
    """Dask logs its own reconnect attempts with tracebacks, from its client's thread and until the process
    ends; what a user needs is our message (-vv: theirs too)."""
    level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL + 1
    for name in ("distributed", "distributed.client", "distributed.utils", "distributed.comm", "tornado"):
        logging.getLogger(name).setLevel(level)
