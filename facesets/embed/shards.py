"""The worker side of a distributed embed: one shard of queue entries in, their outcomes out.

A Dask worker (``dask worker tcp://host:8786 --nthreads 2`` on a machine with facesets and a model pack)
runs :func:`embed_shard` for the driver (:mod:`facesets.embed.scheduler`). The worker is stateless compute:
it builds its face engine once per process, with its own execution providers, and keeps it for every later
shard; it refuses to work when its pack is not the driver's, byte for byte (two packs' embeddings never mix).
It reads each image by the path form it can see (``--path-map`` first, then the Windows form on Windows),
or takes the bytes the driver shipped; a file it cannot see comes back ``missing``, for the driver to ship.
Nothing here imports Dask but :func:`_current_worker`: the module is plain Python and tested as such.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts.queue import QueueEntry
from ..base.errors import ConfigError, ModelPackError, ProviderError, WorkerRefusedError
from ..base.settings import Mode
from ..models.faces import FaceEngine, build_engine
from ..models.packs import ModelPack, PackIdentity, resolve_pack
from ..models.runtime import is_cpu_only, runtime_options
from .queue import EmbedConfig, ImageWork, Outcome, inference_workers
from .stages import Claims, Read, claim_bytes, read_and_claim


@dataclass(frozen=True)
class PathMap:
    """``--path-map FROM=TO``: a queue path (either form) that starts with ``source`` is read at ``target``."""

    source: str
    target: str

    @classmethod
    def parse(cls, text: str) -> PathMap:
        source, equals, target = text.partition("=")
        if not equals or not source or not target:
            raise ConfigError(f"--path-map {text!r} is not FROM=TO (e.g. /mnt/d/photos=//nas/photos)")
        return cls(source, target)


def worker_path(entry: QueueEntry, maps: tuple[PathMap, ...]) -> str:
    """The name a worker opens for ``entry``: the first map that fits either form, else the local form."""
    for mapping in maps:
        for form in (entry.path, entry.windows_path):
            if form and form.startswith(mapping.source):
                return mapping.target + form[len(mapping.source) :]
    return entry.local_path()


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs of the driver's embed options, in plain values: a ``pathlib`` path of the driver's
    platform would not unpickle on a worker of the other one (a PosixPath on Windows)."""

    model_dir: str | None
    model_pack: str
    providers: tuple[str, ...]
    concurrency: int
    io_concurrency: int
    min_face: float
    det_sizes: tuple[int, ...]
    mode: str
    max_pixels: int
    max_bytes: int

    @classmethod
    def of(cls, config: EmbedConfig) -> WorkerSpec:
        return cls(
            str(config.model_dir) if config.model_dir is not None else None,
            config.model_pack,
            config.providers,
            config.concurrency,
            config.io_concurrency,
            config.min_face,
            config.det_sizes,
            config.mode.value,
            config.max_pixels,
            config.max_bytes,
        )

    def embed_config(self) -> EmbedConfig:
        """The options as this worker runs them (it has no queue or cache of its own)."""
        return EmbedConfig(
            queue=Path(),
            cache=Path(),
            model_dir=Path(self.model_dir) if self.model_dir is not None else None,
            model_pack=self.model_pack,
            providers=self.providers,
            concurrency=self.concurrency,
            io_concurrency=self.io_concurrency,
            min_face=self.min_face,
            det_sizes=self.det_sizes,
            mode=Mode(self.mode),
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
        )


@dataclass(frozen=True)
class Shard:
    """One unit of distributed work. ``known``: content hashes the cache already holds (their bytes are
    duplicates, read and hashed but not embedded); ``data``: bytes the driver read for the worker."""

    number: int
    entries: tuple[QueueEntry, ...]
    spec: WorkerSpec
    identity: PackIdentity
    known: frozenset[str] = frozenset()
    maps: tuple[PathMap, ...] = ()
    data: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardResult:
    """A shard's outcomes, in its order, and which worker computed them in how long; ``refused``: why the
    worker did no work (its pack is not the driver's, or it has none)."""

    number: int
    worker: str
    outcomes: tuple[Outcome, ...] = ()
    started: float = 0.0  # the worker's wall clock (time.time) at the shard's start and end
    ended: float = 0.0
    refused: str = ""


_engines: dict[tuple[object, ...], tuple[FaceEngine, tuple[str, ...]]] = {}
_engines_lock = threading.Lock()


def embed_shard(shard: Shard) -> ShardResult:
    """Run on a worker: the outcome of every entry of ``shard``."""
    started = time.time()
    name = worker_name()
    config = shard.spec.embed_config()
    try:
        engine, providers = _engine(config, shard.identity, name)
    except WorkerRefusedError as exc:
        return ShardResult(shard.number, name, refused=str(exc))
    claims = Claims(known=shard.known.__contains__)

    def read(entry: QueueEntry) -> Read:
        shipped = shard.data.get(entry.path)
        if shipped is not None:
            return claim_bytes(shipped, claims)
        return read_and_claim(worker_path(entry, shard.maps), claims, config.max_bytes)

    work = (
        ImageWork(engine, config, claims, read) if is_cpu_only(providers) else _OneAtATime(engine, config, claims, read)
    )
    workers = inference_workers(config, providers)
    if not config.concurrency:  # the machine's share for each of the shards this worker runs at once
        workers = max(1, workers // worker_threads())
    outcomes = first_copy_first(list(work.run(shard.entries, workers)))
    return ShardResult(shard.number, name, tuple(outcomes), started, time.time())


def first_copy_first(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes with the first of two identical files (in shard order) as the one embedded: the io threads
    race to claim a hash, so a later copy may have won; its faces are moved to the first (same bytes, same
    faces), which makes the cache independent of that race."""
    first: dict[str, int] = {}
    for index, outcome in enumerate(outcomes):
        if not outcome.digest:
            continue
        earlier = first.setdefault(outcome.digest, index)
        if earlier != index and outcome.new and not outcomes[earlier].new:
            twin = outcomes[earlier]
            outcomes[earlier] = replace(outcome, entry=twin.entry)
            outcomes[index] = replace(twin, entry=outcome.entry)
    return outcomes


class _OneAtATime(ImageWork):
    """On an accelerator, one image at a time in the models across all the shards this worker runs at once
    (onnxruntime's DirectML provider allows one ``run`` at a time per session); decoding still overlaps."""

    lock = threading.Lock()

    def infer(self, loaded: tuple[QueueEntry, Read]) -> Outcome:
        with self.lock:
            return super().infer(loaded)


def worker_threads() -> int:
    """How many tasks the Dask worker running this runs at once (``--nthreads``); 1 outside one."""
    worker = _current_worker()
    return max(1, int(worker.state.nthreads)) if worker is not None else 1


def worker_name() -> str:
    """The address of the Dask worker running this, or "local" outside one."""
    worker = _current_worker()
    return str(worker.address) if worker is not None else "local"


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _engine(config: EmbedConfig, expected: PackIdentity, name: str) -> tuple[FaceEngine, tuple[str, ...]]:
    """This process's engine for ``config`` and its providers, built once; :class:`WorkerRefusedError` when its
    pack is another (or it has none, or no usable provider)."""
    key = (config.model_dir, config.model_pack, config.providers, config.det_sizes, config.min_face, config.mode)
    with _engines_lock:
        built = _engines.get(key)
        if built is not None:
            return built
        try:
            pack = _worker_pack(config)
            found = pack.identity()
        except ModelPackError as exc:
            raise WorkerRefusedError(
                f"worker {name} has no usable model pack: {exc}. On that machine, start `dask worker` with "
                "FACESETS_MODEL_ROOT set to the folder that holds the pack, or give the driver a --model-dir that "
                "exists there too"
            ) from exc
        if not found.same_files(expected):
            raise WorkerRefusedError(
                f"worker {name} has model pack {found.describe_files()} at {pack.folder}, but the driver embeds "
                f"with {expected.describe_files()}: embeddings of two packs never mix. Install the driver's pack "
                "on that machine (or stop that worker), then run the same command again"
            )
        try:
            options = runtime_options(config.providers)
        except ProviderError as exc:
            raise WorkerRefusedError(f"worker {name} cannot run the models: {exc}") from exc
        square = config.mode is Mode.REFERENCE
        built = build_engine(pack, options, config.det_sizes, config.min_face, square), options.providers
        _engines[key] = built
        return built


def _worker_pack(config: EmbedConfig) -> ModelPack:
    """The driver's ``--model-dir`` where this machine has that folder, else the pack found by name here
    (``$FACESETS_MODEL_ROOT``, ``~/.insightface/models``)."""
    if config.model_dir is not None and Path(config.model_dir).is_dir():
        return resolve_pack(config.model_dir, config.model_pack)
    return resolve_pack(None, config.model_pack)
