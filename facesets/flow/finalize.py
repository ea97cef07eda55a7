"""``facesets finalize --user U``: embed -> cluster -> export -> load for one user, resumable step by step.

    staging/queue-<user>.json ─embed─▶ caches/<user>.npz ─cluster─▶ staging/clusters-<user>.json
        ─export─▶ facesets_swap_ready/ ─load─▶ PostgreSQL

Each finished step is recorded in ``staging/finalize-<user>.json`` (format ``facesets.finalize`` v1) with the
BLAKE3 of its inputs. A run skips a step that finished with the same inputs and runs the others, so after a
failure or a kill the same command resumes at the step that did not finish (each step also resumes inside
itself), and a changed input (new photos in the queue, a face set edited by hand) re-runs exactly the steps
that read it and those after them. ``--steps`` runs a subset (what ``make embed USER=u`` does); ``--force``
ignores the record.

The embed step runs here, on the workers of a Dask scheduler (``--embed dask``), or on the Windows side of WSL
(:mod:`facesets.flow.winside`) when ``--embed windows``
(or ``auto`` under WSL with WIN_ROOT and WIN_PYTHON set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import blake3
import orjson

from ..artifacts.layout import finalize_record, user_cache, user_plan, user_queue
from ..base.errors import ConfigError, StateError
from ..base.fsio import atomic_write_json
from ..base.progress import Progress, ProgressFactory
from ..base.settings import DEFAULT_MIN_FACES
from ..models.packs import DEFAULT_PACK
from ..store.database import DatabaseConfig

if TYPE_CHECKING:
    from ..embed.scheduler import DistributedConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "facesets.finalize"
STATE_VERSION = 1


class Step(StrEnum):
    EMBED = "embed"
    CLUSTER = "cluster"
    EXPORT = "export"
    LOAD = "load"


STEPS = tuple(Step)


class EmbedSide(Protocol):
    """Where the embed step runs when not here (:class:`facesets.flow.winside.WindowsSide`)."""

    def embed(self, queue: Path, cache: Path, user: str) -> Path: ...


@dataclass(frozen=True)
class FinalizeConfig:
    user: str
    staging: Path = Path("staging")
    caches: Path = Path("caches")
    sets_dir: Path = Path("facesets_swap_ready")
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    steps: tuple[Step, ...] = STEPS
    force: bool = False
    model_dir: Path | None = None
    model_pack: str = DEFAULT_PACK
    providers: tuple[str, ...] = ()
    embed_side: EmbedSide | None = None  # a winside.WindowsSide, or None: embed here
    spread: DistributedConfig | None = None  # embed on the workers of a Dask scheduler
    split_eras: bool = False
    min_faces: int = DEFAULT_MIN_FACES  # smallest new face set
    progress: bool = False  # a bar for each step (on a terminal)

    def bar(self, label: str, unit: str) -> ProgressFactory | None:
        """The progress factory a step hands to its stage, or None."""
        return (lambda total: Progress(total, f"{self.user}: {label}", unit)) if self.progress else None

    @property
    def queue(self) -> Path:
        return user_queue(self.staging, self.user)

    @property
    def cache(self) -> Path:
        return user_cache(self.caches, self.user)

    @property
    def plan(self) -> Path:
        return user_plan(self.staging, self.user)

    @property
    def state(self) -> Path:
        return finalize_record(self.staging, self.user)


@dataclass
class FinalizeSummary:
    user: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_finalize(config: FinalizeConfig, announce: Callable[[str], None] = log.warning) -> FinalizeSummary:
    started = time.monotonic()
    if not config.queue.exists() and Step.EMBED in config.steps:
        raise ConfigError(
            f"no queue for {config.user!r} at {config.queue}: stage first (facesets immich stage --user "
            f"{config.user}, or make stage USER={config.user})"
        )
    record = read_state(config.state, config.user)
    summary = FinalizeSummary(config.user)
    for step in STEPS:
        if step not in config.steps:
            continue
        done = record["steps"].get(step.value)
        if not config.force and done is not None and done.get("inputs") == fingerprint(step_inputs(step, config)):
            summary.skipped.append(step.value)
            continue
        announce(f"{config.user}: {step.value} ...")
        result = RUNNERS[step](config)
        summary.ran.append(step.value)
        summary.results[step.value] = result
        record["steps"][step.value] = {"result": result, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # what this run's steps wrote (export writes the sets cluster read) is not a change to react to next time
        for name in summary.ran:
            record["steps"][name]["inputs"] = fingerprint(step_inputs(Step(name), config))
        atomic_write_json(config.state, record)
    summary.elapsed = round(time.monotonic() - started, 3)
    return summary


def step_inputs(step: Step, config: FinalizeConfig) -> list[Path]:
    """The files (or folders) a step reads."""
    return {
        Step.EMBED: [config.queue],
        Step.CLUSTER: [config.cache, config.sets_dir],
        Step.EXPORT: [config.plan],
        Step.LOAD: [config.cache, config.sets_dir],
    }[step]


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """BLAKE3 of each input file; of a folder, of its files' names, sizes and times; "absent" if missing."""
    found = {}
    for path in paths:
        digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                if item.is_file():
                    stat = item.stat()
                    digest.update(f"{item.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        elif path.is_file():
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
        else:
            found[str(path)] = "absent"
            continue
        found[str(path)] = digest.hexdigest()
    return found


def read_state(path: Path, user: str) -> dict[str, Any]:
    if not path.exists():
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "user": user, "steps": {}}
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise StateError(f"{path} cannot be read ({exc}): remove it and every step runs again (each resumes)") from exc
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or not isinstance(data.get("steps"), dict):
        raise StateError(f"{path} is not a {STATE_FORMAT} file: remove it and every step runs again (each resumes)")
    if data.get("version") != STATE_VERSION:
        raise StateError(f"{path} has version {data.get('version')!r}; this facesets reads {STATE_VERSION}: upgrade")
    return data


def _embed(config: FinalizeConfig) -> dict[str, Any]:
    if config.embed_side is not None:
        config.embed_side.embed(config.queue, config.cache, config.user)
        return {"where": "windows", "cache": str(config.cache)}
    from ..embed.queue import EmbedConfig, run_embed

    config.cache.parent.mkdir(parents=True, exist_ok=True)
    embed_config = EmbedConfig(
        queue=config.queue,
        cache=config.cache,
        model_dir=config.model_dir,
        model_pack=config.model_pack,
        providers=config.providers,
    )
    if config.spread is not None:
        from ..embed.scheduler import run_distributed

        stats = run_distributed(embed_config, config.spread, progress=config.bar("embed", "img"))
        return {"where": "dask", **stats.as_dict()}
    return {"where": "local", **run_embed(embed_config, progress=config.bar("embed", "img")).as_dict()}


def _cluster(config: FinalizeConfig) -> dict[str, Any]:
    from ..cluster.identify import ClusterConfig, PackEmbedder, run_cluster
    from ..models.packs import resolve_pack

    embedder = PackEmbedder(lambda: resolve_pack(config.model_dir, config.model_pack), config.providers)
    cluster_config = ClusterConfig(
        caches=(config.cache,),
        sets_dir=config.sets_dir,
        plan=config.plan,
        min_faces=config.min_faces,
        embedder=embedder,
    )
    return run_cluster(cluster_config, progress=config.bar("cluster", "face")).as_dict()


def _export(config: FinalizeConfig) -> dict[str, Any]:
    from ..export.sets import ExportConfig, run_export

    export_config = ExportConfig(config.plan, config.sets_dir, split_eras=config.split_eras)
    return run_export(export_config, progress=config.bar("export", "face")).as_dict()


def _load(config: FinalizeConfig) -> dict[str, Any]:
    from ..store.database import connect, database_url
    from ..store.load import LoadConfig, run_load
    from ..store.migrations import migrate

    with database_url(config.database) as url:
        with connect(url) as conn:
            migrate(conn)
        load_config = LoadConfig(DatabaseConfig(url), config.caches, (config.cache,), sets=config.sets_dir)
        return run_load(load_config, progress=config.bar("load", "face")).as_dict()


RUNNERS: dict[Step, Callable[[FinalizeConfig], dict[str, Any]]] = {
    Step.EMBED: _embed,
    Step.CLUSTER: _cluster,
    Step.EXPORT: _export,
    Step.LOAD: _load,
}
