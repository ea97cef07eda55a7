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
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..artifacts.cache import CacheWriter
from ..artifacts.queue import QueueEntry, read_queue
from ..base.errors import CacheError, ImageLoadError, SchedulerError, WorkerRefusedError
from ..base.messages import counted
from ..base.pipeline import read_image
from ..base.progress import Progress, ProgressFactory
from ..models.packs import PackIdentity, resolve_pack
from .queue import EmbedConfig, EmbedStats, Outcome, embedded_hashes, record, select_todo
from .shards import PathMap, Shard, ShardResult, WorkerSpec, embed_shard

if TYPE_CHECKING:
    from distributed import Client, Future, as_completed

log = logging.getLogger(__name__)

# A worker that dies on every try of one image may have died of its neighbour in another shard (a worker runs
# several at once) or of its memory limit: not recorded, so that the next run tries the image again.
WORKER_DIED = "its worker died each time it was tried (not recorded: the next run tries it again)"
SHIP_SHARD_BYTES = 32 << 20  # a shard of shipped bytes holds at most this much (or --shard-size images)
WINDOW_REFRESH_SECONDS = 5.0
QUIET_SECONDS = 60.0  # no shard back for this long: the driver says what it waits for


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
    first: float = 0.0  # the worker's clock: when its first shard started and its last one ended
    last: float = 0.0

    def busy(self, started: float, ended: float) -> None:
        self.first = min(self.first, started) if self.first else started
        self.last = max(self.last, ended)

    @property
    def seconds(self) -> float:
        return self.last - self.first

    def as_dict(self) -> dict[str, object]:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
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
    resubmitted_shards: int = 0  # by the driver: lost ones, halves of those whose worker died (Dask's own retries not)
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
        if not equals or not name.strip() or not 0 < value < math.inf:
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
        with _Watchdog(self.client, self.spread) as watchdog:
            for future in self.completed:
                watchdog.heard()
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
        size = 0
        for entry in entries:
            try:
                data[entry.path] = read_image(entry.local_path(), self.config.max_bytes)
            except ImageLoadError as exc:
                self._record(Outcome(entry, size=entry.size, error=exc.reason), None)
                continue
            batch.append(entry)
            size += len(data[entry.path])
            self.stats.shipped += 1
            if size >= SHIP_SHARD_BYTES:
                self._submit(tuple(batch), data)
                data, batch, size = {}, [], 0
        if batch:
            self._submit(tuple(batch), data)

    def _result(self, future: Future[ShardResult], shard: Shard) -> ShardResult | None:
        """The shard's result; None when it was submitted again: lost, or split after it killed its workers
        (Dask itself recomputes a shard whose worker died, and gives up after three such deaths)."""
        from distributed import KilledWorker

        error: BaseException | None = None
        if future.status in ("finished", "error"):
            try:
                result: ShardResult = future.result()
                return result
            except KilledWorker as exc:
                error = exc
            except Exception as exc:  # lost data or a lost scheduler: decided below
                if future.status == "error" and self.client.status == "running":
                    raise SchedulerError(f"a shard failed on its worker: {type(exc).__name__}: {exc}") from exc
        if self.client.status != "running":
            raise SchedulerError(
                f"the Dask scheduler at {self.spread.scheduler} went away; what came back is in the cache. "
                "Start the scheduler (and its workers) again and run the same command to continue"
            )
        if error is None:  # lost: its result's worker died before it came back
            parts = [shard.entries]
        elif len(shard.entries) > 1:
            half = len(shard.entries) // 2
            parts = [shard.entries[:half], shard.entries[half:]]
        else:
            entry = shard.entries[0]
            self._record(Outcome(entry, size=entry.size, error=WORKER_DIED, transient=True), None)
            return None
        for part in parts:
            self.stats.resubmitted_shards += 1
            self._submit(part, {entry.path: shard.data[entry.path] for entry in part if entry.path in shard.data})
        return None

    def _take(self, result: ShardResult) -> None:
        if result.refused:
            raise WorkerRefusedError(result.refused)
        worker = self.stats.workers.setdefault(result.worker, WorkerStats())
        worker.busy(result.started, result.ended)
        for outcome in result.outcomes:
            if outcome.missing:
                self.to_ship.append(outcome.entry)  # this worker cannot see the file: send its bytes
                continue
            self._record(outcome, worker)

    def _record(self, outcome: Outcome, worker: WorkerStats | None) -> None:
        path = outcome.entry.path
        if path in self.recorded:
            return  # computed twice (a retried shard): recorded once
        self.recorded.add(path)
        if outcome.new and outcome.digest in self.claimed:  # bytes recorded before under another path
            outcome = replace(outcome, new=False, width=0, height=0, meta=outcome.meta[:0], vectors=outcome.vectors[:0])
        elif outcome.new and not outcome.transient:
            self.claimed.add(outcome.digest)
        if worker is not None:
            worker.images += 1
            worker.faces += outcome.faces
            worker.errors += 1 if outcome.error else 0
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
            log.warning(
                "no worker of %s offers --resources %s yet: the shards wait for one",
                self.spread.scheduler,
                _resources_text(self.spread.resources),
            )
        log.info("%s at %s", counted(len(workers), "worker"), self.spread.scheduler)


class _Watchdog:
    """Says so, every :data:`QUIET_SECONDS`, while no shard comes back: no worker left, none with the resources
    asked for, or workers paused by Dask for memory would otherwise be a silent wait."""

    def __init__(self, client: Client, spread: DistributedConfig) -> None:
        self.client, self.spread = client, spread
        self.last = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="facesets-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def heard(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self.stop.wait(QUIET_SECONDS / 4):
            quiet = time.monotonic() - self.last
            if quiet < QUIET_SECONDS:
                continue
            try:
                workers = len(self.client.nthreads())
            except Exception:  # the scheduler is going away: the main loop says so
                return
            wanted = _resources_text(self.spread.resources)
            log.warning(
                "no shard has come back for %d s; %s at %s%s (Ctrl-C stops, keeping what came back)",
                quiet, counted(workers, "worker"), self.spread.scheduler,
                f", and the shards need --resources {wanted}" if wanted else "",
            )  # fmt: skip
            self.last = time.monotonic()


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


def _resources_text(resources: tuple[tuple[str, float], ...]) -> str:
    """``--resources`` as written: ``dml=1,gpu=0.5``."""
    return ",".join(f"{name}={amount:g}" for name, amount in resources)


def guided_size(remaining: int, threads: int, largest: int) -> int:
    """The size of the next shard: ``largest`` while much is left, then a quarter of an even share of what
    is left per worker thread, so that the last shards are small and no worker idles while another finishes
    a big one (guided self-scheduling)."""
    return max(1, min(largest, remaining // (4 * max(1, threads))))


@contextlib.contextmanager
def _connect(spread: DistributedConfig) -> Iterator[Client]:
    from distributed import Client

    _quiet_dask()  # after the import: importing distributed sets its loggers' levels
    _probe(spread)
    try:
        client = Client(spread.scheduler, timeout=spread.connect_timeout, set_as_default=False)
    except Exception as exc:  # whatever Dask raises, the user needs one message
        raise _unreachable(spread, exc) from exc
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=5)


def _probe(spread: DistributedConfig) -> None:
    """Connect and shake hands with the scheduler once, within ``connect_timeout`` (plus a margin), before a
    Client is made: a port where something else answers (a dashboard, an HTTP server) otherwise hangs, or fails
    inside Dask with a misleading error, and a failed Client leaves a 20 s wait at exit."""
    import asyncio

    from distributed.comm.core import connect

    async def shake() -> None:
        comm = await asyncio.wait_for(
            connect(spread.scheduler, timeout=spread.connect_timeout), spread.connect_timeout + 5
        )
        await comm.close()

    try:
        asyncio.run(shake())
    except Exception as exc:  # an unusable address, whatever the reason
        raise _unreachable(spread, exc) from exc


def _unreachable(spread: DistributedConfig, exc: BaseException) -> SchedulerError:
    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, TimeoutError):
        seconds = spread.connect_timeout + 5
        why = f"no Dask scheduler answered within {seconds:g} s: is it the scheduler's port, not its dashboard's?"
    return SchedulerError(
        f"cannot reach the Dask scheduler at {spread.scheduler} ({why}). Start one with `dask scheduler` and workers "
        "with `dask worker ADDRESS --nthreads 2`, then run the same command"
    )


def _quiet_dask() -> None:
    """Dask logs its own reconnect attempts with tracebacks, from its client's thread and until the process
    ends; what a user needs is our message (-vv: theirs too)."""
    level = logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL + 1
    for name in ("distributed", "distributed.client", "distributed.utils", "distributed.comm", "tornado"):
        logging.getLogger(name).setLevel(level)
