"""The ``facesets`` command line: option parsing and messages only; the work is in the library."""

from __future__ import annotations

import errno
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from . import __version__
from .clicommon import database_options, immich, json_option, model_options, providers_option
from .clicommon import emit as _emit
from .clidb import persons, search_command, similar_command
from .cliflow import finalize_command
from .clip import CLIP_ROOT_ENV, DEFAULT_CLIP_MODEL
from .errors import ConfigError, FacesetsError
from .layout import PLAN
from .messages import SafeFormatter, safe, safe_lines
from .packs import DEFAULT_PACK
from .settings import (
    DEFAULT_DET_SIZES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_FACES,
    DEFAULT_PERSON_MIN_FACES,
    Mode,
)

# Stage modules (numpy, OpenCV, onnxruntime behind them) are imported inside the commands that use them,
# so that `--help` and runs with nothing to do start fast.

log = logging.getLogger("facesets")
ALGORITHMS = ("graph", "average", "components", "dbscan")  # clustering.Algorithm, without importing numpy


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facesets")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More messages: -v for progress notes, -vv for debugging (before or after the command's name).",
)
def cli(verbose: int) -> None:
    """Turn photo libraries into searchable faces and identities.

    Stages pass versioned files to each other (queue.json -> face cache .npz), so each can run on
    another machine and resume after a crash. See the README for the whole workflow.
    """
    set_verbosity(verbose)


VERBOSE = {"-v": 1, "-vv": 2, "-vvv": 3, "--verbose": 1}


def set_verbosity(verbose: int) -> None:
    """Log records to stderr at the level ``-v`` asks for, each line without secrets or control characters."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(SafeFormatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (not the stream of the first call: a library
    caller or a test may replace it between runs)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _take_verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """-v/-vv/--verbose anywhere before a ``--``, counted and taken out (so ``facesets embed -v`` works)."""
    verbose, rest = 0, list[str]()
    for position, arg in enumerate(argv):
        if arg == "--":
            return verbose, rest + argv[position:]
        if arg in VERBOSE:
            verbose += VERBOSE[arg]
        else:
            rest.append(arg)
    return verbose, rest


def _parse_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of sizes") from None
    if not sizes or min(sizes) < 32:
        raise click.BadParameter("sizes must be at least 32 pixels")
    return sizes


def _target_options(function: Any) -> Any:
    """--target (repeatable), --caches and --database, shared by index and backfill."""
    function = click.option(
        "--database",
        default=None,
        help="PostgreSQL URL (schema made by `facesets migrate`): at the end, load what this run found into it, "
        "as `facesets load --caches` does (only what is new is added).",
    )(function)
    function = click.option(
        "--caches",
        type=click.Path(path_type=Path, file_okay=False),
        default=Path("caches"),
        show_default=True,
        help="Folder for the index state (index.sqlite) and the face cache (faces.npz).",
    )(function)
    return click.option(
        "--target",
        "targets",
        multiple=True,
        required=True,
        type=click.Path(path_type=Path),
        help="A gallery, a chunk of galleries, a root of chunks, or any folder; repeat for several.",
    )(function)


@cli.command()
@click.option(
    "--queue", "queue_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="queue.json to read."
)
@click.option(
    "--cache",
    "cache_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Face cache (.npz) to create or resume.",
)
@model_options
@providers_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Inference workers; 0 = one per CPU core on the CPU, 1 on an accelerator.",
)
@click.option(
    "--io-concurrency",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Read+decode threads; 0 = as many as --concurrency (at least 2). Each holds up to two decoded "
    "images in memory.",
)
@click.option(
    "--min-face",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Skip faces whose short side is below this many pixels of the original.",
)
@click.option(
    "--det-size",
    "det_sizes",
    callback=lambda ctx, param, value: _parse_sizes(value),
    default=",".join(str(size) for size in DEFAULT_DET_SIZES),
    show_default=True,
    help="Detector input size(s), comma-separated: each is one detection pass, merged by NMS (InsightFace 2's "
    "default). Detectors with a fixed input use their own size.",
)
@click.option(
    "--mode",
    "mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.REFERENCE.value,
    show_default=True,
    help="'reference' gives the faces and embeddings of InsightFace's FaceAnalysis (full decode, square "
    "detector input); 'fast' decodes big JPEGs at 1/2 when the faces allow and pads the detector input only to a "
    "multiple of 32: less work, keypoints and embeddings move slightly (see the README's performance figures).",
)
@click.option(
    "--flush-every",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Images per journal flush: a kill loses at most this many.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images with more pixels than this (decompression-bomb guard).",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Refuse files larger than this before reading them (a sparse file or a device named like a photo).",
)
@click.option("--retry-errors", is_flag=True, help="Try again images recorded as load errors.")
@json_option
def embed(
    queue_path: Path,
    cache_path: Path,
    model_dir: Path | None,
    model_pack: str,
    providers: tuple[str, ...],
    concurrency: int,
    io_concurrency: int,
    min_face: float,
    det_sizes: tuple[int, ...],
    mode: str,
    flush_every: int,
    max_pixels: int,
    max_bytes: int,
    retry_errors: bool,
    as_json: bool,
) -> None:
    """Detect, align and embed the faces of every queued image into a face cache.

    Resumable: run the same command again after a crash and it continues where it stopped.

    Example: facesets embed --queue queue.json --cache caches/faces.npz --model-pack buffalo_l
    """
    from .embed import EmbedConfig, run_embed
    from .progress import Progress

    config = EmbedConfig(
        queue=queue_path,
        cache=cache_path,
        model_dir=model_dir,
        model_pack=model_pack,
        providers=providers,
        concurrency=concurrency,
        io_concurrency=io_concurrency,
        min_face=min_face,
        det_sizes=det_sizes,
        mode=Mode(mode),
        flush_every=flush_every,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        retry_errors=retry_errors,
    )
    stats = run_embed(config, progress=lambda total: Progress(total, "embed", enabled=None if not as_json else False))
    _emit({"cache": str(cache_path), **stats.as_dict()}, as_json)


@cli.command()
@_target_options
@model_options
@providers_option
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="ML slots.")
@click.option(
    "--io-concurrency",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="File reads + hashing threads; 0 = twice --concurrency. Each holds up to two decoded images.",
)
@click.option(
    "--reindex",
    is_flag=True,
    help="Bypass the gallery and size skips: re-read and re-hash every file (content already embedded "
    "still gets no ML work). Finds edits that kept a file's size.",
)
@click.option("--ml-purge", is_flag=True, help="Forget all ML results under the targets and index them from scratch.")
@click.option(
    "--clip-model",
    default=DEFAULT_CLIP_MODEL,
    show_default=True,
    help=f"CLIP model (ONNX export in Immich's layout) for image embeddings, looked up under ${CLIP_ROOT_ENV}, "
    "then ~/.cache/facesets/clip. Changing it re-embeds CLIP only.",
)
@click.option(
    "--clip-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A CLIP model folder holding visual/model.onnx (overrides --clip-model).",
)
@click.option("--no-clip", is_flag=True, help="Skip CLIP image embeddings (faces only).")
@click.option(
    "--flush-every",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Images per commit of the cache journal and the state: a kill loses at most this many.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Refuse files larger than this before reading them (a sparse file or a device named like a photo).",
)
@json_option
def index(
    targets: Sequence[Path],
    caches: Path,
    database: str | None,
    model_dir: Path | None,
    model_pack: str,
    providers: tuple[str, ...],
    concurrency: int,
    io_concurrency: int,
    reindex: bool,
    ml_purge: bool,
    flush_every: int,
    clip_model: str,
    clip_dir: Path | None,
    no_clip: bool,
    max_bytes: int,
    as_json: bool,
) -> None:
    """Index local galleries: faces of every new or changed image, with four skip layers.

    Re-running on an unchanged tree reads no file: galleries whose file count and bytes are unchanged are
    skipped, known files of the same size are not read, and content already embedded anywhere gets no ML.

    Example: facesets index --target /mnt/d/galleries --caches caches --model-pack buffalo_l (add --no-clip when
    no CLIP model is installed)
    """
    from .index import IndexConfig, run_index

    _check_store(database)
    config = IndexConfig(
        targets=tuple(targets),
        caches=caches,
        model_dir=model_dir,
        model_pack=model_pack,
        providers=providers,
        concurrency=concurrency,
        io_concurrency=io_concurrency,
        reindex=reindex,
        ml_purge=ml_purge,
        flush_every=flush_every,
        clip_model=clip_model,
        clip_dir=clip_dir,
        no_clip=no_clip,
        max_bytes=max_bytes,
    )
    stats = run_index(config, progress=_bar("index", "img", as_json))
    _emit(_load_into(database, caches, stats.as_dict(), False, as_json), as_json)


@cli.command()
@_target_options
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="stat() threads.")
@json_option
def backfill(targets: Sequence[Path], caches: Path, database: str | None, concurrency: int, as_json: bool) -> None:
    """Stat only, no reads, no models: fill file sizes and gallery count/bytes of galleries already indexed
    (with --database, in the database too).

    Example: facesets backfill --target /mnt/d/galleries --caches caches --database "$DATABASE_URL"
    """
    from .backfill import run_backfill

    _check_store(database)
    stats = run_backfill(list(targets), caches, concurrency)
    _emit(_load_into(database, caches, stats.as_dict(), True, as_json), as_json)


def _check_store(database: str | None) -> None:
    """Before a long run: the database named by --database is reachable and has the schema."""
    if database:
        from .database import DatabaseConfig, open_store

        with open_store(DatabaseConfig(url=database)):
            pass


def _load_into(
    database: str | None, caches: Path, result: dict[str, Any], galleries_only: bool, as_json: bool
) -> dict[str, Any]:
    """The run's counters, and with --database what loading the caches folder into it added."""
    if not database:
        return result
    from .database import DatabaseConfig
    from .load import LoadConfig, run_load

    config = LoadConfig(DatabaseConfig(url=database), caches=caches, galleries_only=galleries_only)
    loaded = run_load(config, progress=_bar("load", "face", as_json))
    return {**result, "database": loaded.as_dict()}


@cli.command()
@database_options
@json_option
def migrate(database: str | None, data: Path, as_json: bool) -> None:
    """Create or update the database schema (numbered migrations; safe to run twice or concurrently).

    Example: facesets migrate --database 'postgresql://faces@db.lan/faces?sslmode=require'
    """
    from .database import DatabaseConfig, connect, database_url, describe
    from .migrations import LATEST
    from .migrations import migrate as run_migrations

    with database_url(DatabaseConfig(database, data)) as url, connect(url) as conn:
        applied = run_migrations(conn)
        if as_json:
            done = [{"version": migration.version, "name": migration.name} for migration in applied]
            _emit({"database": describe(url), "applied": done, "schema": LATEST}, True)
            return
        for migration in applied:
            click.echo(f"applied migration {migration.version}: {migration.name}")
        click.echo(f"{describe(url)}: schema at version {LATEST}" + ("" if applied else " (already up to date)"))


@cli.command()
@database_options
@click.option(
    "--caches",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("caches"),
    show_default=True,
    help="Folder with faces.npz, index.sqlite and clip.sqlite (each loaded if present).",
)
@click.option(
    "--cache",
    "extra_caches",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Another face cache to load (for example one made by the embed worker); repeat for several.",
)
@click.option("--clip-model", default=None, help="Which CLIP model's vectors to load when clip.sqlite holds several.")
@click.option(
    "--sets",
    "sets_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("facesets_swap_ready"),
    show_default=True,
    help="Face-set folder whose canonical sets become persons (loaded if it exists).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Images per transaction: a killed load loses at most the batches in flight.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Connections writing face batches at once (each holds one batch of vectors in memory).",
)
@json_option
def load(
    database: str | None,
    data: Path,
    caches: Path,
    extra_caches: Sequence[Path],
    clip_model: str | None,
    sets_dir: Path,
    batch: int,
    workers: int,
    as_json: bool,
) -> None:
    """Load caches, the gallery index state, CLIP vectors and face sets into PostgreSQL (idempotent, batched).

    Example: facesets load --caches caches --cache caches/peter.npz
    """
    from .database import DatabaseConfig
    from .load import LoadConfig, run_load

    config = LoadConfig(
        DatabaseConfig(database, data), caches, tuple(extra_caches), clip_model, batch, sets_dir, workers
    )
    _emit(run_load(config, progress=_bar("load", "face", as_json)).as_dict(), as_json)


@cli.command("cluster")
@click.option(
    "--cache",
    "caches",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Face cache(s) to cluster into a plan (repeatable; all made by one model). Without --cache, the "
    "faces of the database are clustered into persons.",
)
@database_options
@click.option(
    "--threshold",
    type=float,
    help="Database mode: the cosine similarity two single faces need to share a cluster, as the original rbv "
    "(default: learned from the library, see the README).",
)
@click.option(
    "--sets",
    "sets_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("facesets_swap_ready"),
    show_default=True,
    help="The face-set folder: its canonical faceset_NNN sets are the known identities.",
)
@click.option(
    "--plan",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path(PLAN),
    show_default=True,
    help="Where to write the cluster plan that `facesets export` applies.",
)
@click.option(
    "--algorithm",
    type=click.Choice(ALGORITHMS),
    default="graph",
    show_default=True,
    help="graph: average linkage with cannot-link and relative closeness (best measured); average: the "
    "original face-sets; components: the original rbv cluster; dbscan: Immich-style.",
)
@click.option("--match-distance", type=float, help="Join an existing set within this cosine distance of its centre.")
@click.option(
    "--cluster-distance",
    type=float,
    help="Never join two single faces farther apart than this (default: learned from the library).",
)
@click.option(
    "--export-distance",
    type=float,
    help="Leave out members farther than this from their set's centre (default: members the clustering's own "
    "threshold does not hold for).",
)
@click.option("--closeness", type=float, help="graph: merge only at this fraction of the looser cluster's cohesion.")
@click.option(
    "--min-faces",
    type=click.IntRange(min=1),
    help=f"Smallest new set (default {DEFAULT_MIN_FACES}), or new person in database mode (default "
    f"{DEFAULT_PERSON_MIN_FACES}).",
)
@click.option("--min-points", type=click.IntRange(min=1), default=3, show_default=True, help="dbscan: core size.")
@click.option("--reconsider", is_flag=True, help="Also cluster faces of photos earlier runs considered and left out.")
@model_options
@providers_option
@json_option
def cluster_command(
    caches: Sequence[Path],
    database: str | None,
    data: Path,
    threshold: float | None,
    sets_dir: Path,
    plan: Path,
    algorithm: str,
    match_distance: float | None,
    cluster_distance: float | None,
    export_distance: float | None,
    closeness: float | None,
    min_faces: int | None,
    min_points: int,
    reconsider: bool,
    model_dir: Path | None,
    model_pack: str,
    providers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Cluster faces into identities: face caches into a plan for `facesets export`, or (without --cache)
    the faces of the database into persons.

    With --cache: new faces join the existing face sets or form new ones; nothing under --sets changes
    until `facesets export`. Without: faces with no person join a person or form new persons; existing
    assignments and recorded "not this person" are kept. Thresholds default per model (see the README).

    Examples: facesets cluster --cache caches/peter.npz --sets facesets_swap_ready --plan clusters.json;
    facesets cluster --database postgresql://faces@db.lan/faces --threshold 0.65
    """
    from .clustering import Algorithm
    from .database import DatabaseConfig
    from .persons import PersonClusterConfig, run_person_cluster

    context = click.get_current_context()
    explicit_database = context.get_parameter_source("database") is click.core.ParameterSource.COMMANDLINE
    if not caches:
        if not database and not (data / "PG_VERSION").exists():
            raise ConfigError(
                f"nothing to cluster: no --cache given, and no database (no --database, no embedded one under "
                f"{data}). `facesets cluster --cache caches/faces.npz` clusters a face cache into face sets; without "
                "--cache, cluster groups the faces loaded into the database (facesets load) into persons"
            )
        person_config = PersonClusterConfig(
            DatabaseConfig(database, data),
            algorithm=Algorithm(algorithm),
            threshold=threshold,
            match=match_distance,
            cluster=cluster_distance,
            export=export_distance,
            closeness=closeness,
            min_faces=min_faces or DEFAULT_PERSON_MIN_FACES,
            min_points=min_points,
        )
        stats = run_person_cluster(person_config, progress=_bar("cluster", "face", as_json))
        _emit(_learned_in_words(stats.as_dict(), as_json), as_json)
        return
    if explicit_database or threshold is not None:
        raise click.UsageError(
            "--threshold and --database are for clustering the persons of the database; with --cache the face caches "
            "are clustered (--cluster-distance sets the distance there): pick one"
        )
    summary = _cluster_caches(**_cache_mode(click.get_current_context().params))
    _emit(_learned_in_words(summary, as_json), as_json)


DATABASE_ONLY = ("database", "data", "threshold")  # the options of cluster's database mode


def _cache_mode(options: dict[str, Any]) -> dict[str, Any]:
    """Of cluster's options, those of `cluster --cache` (what :func:`_cluster_caches` takes)."""
    return {name: value for name, value in options.items() if name not in DATABASE_ONLY}


def _cluster_caches(
    caches: Sequence[Path],
    sets_dir: Path,
    plan: Path,
    algorithm: str,
    match_distance: float | None,
    cluster_distance: float | None,
    export_distance: float | None,
    closeness: float | None,
    min_faces: int | None,
    min_points: int,
    reconsider: bool,
    model_dir: Path | None,
    model_pack: str,
    providers: tuple[str, ...],
    as_json: bool = False,
) -> dict[str, Any]:
    """`facesets cluster --cache`: the plan written, its summary returned."""
    from .clustering import Algorithm
    from .identify import ClusterConfig, PackEmbedder, run_cluster
    from .packs import resolve_pack

    explicit_pack = model_dir is not None or model_pack != DEFAULT_PACK
    embedder = PackEmbedder(
        resolve_pack(model_dir, model_pack) if explicit_pack else lambda: resolve_pack(None, model_pack), providers
    )
    config = ClusterConfig(
        caches=tuple(caches),
        sets_dir=sets_dir,
        plan=plan,
        algorithm=Algorithm(algorithm),
        match=match_distance,
        cluster=cluster_distance,
        export=export_distance,
        closeness=closeness,
        min_faces=min_faces or DEFAULT_MIN_FACES,
        min_points=min_points,
        reconsider=reconsider,
        embedder=embedder,
    )
    return run_cluster(config, progress=_bar("cluster", "face", as_json)).as_dict()


def _bar(label: str, unit: str, as_json: bool) -> Any:
    """A progress factory for a stage (a bar on a terminal), none with --json."""
    from .progress import Progress

    return None if as_json else lambda total: Progress(total, label, unit)


def _learned_in_words(summary: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """The summary with its learned thresholds as one line a person reads (JSON keeps every figure)."""
    from .calibration import describe

    if not as_json and summary.get("estimate"):
        summary["estimate"] = describe(summary["estimate"])
    return summary


@cli.command("export")
@click.option(
    "--plan",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=Path(PLAN),
    show_default=True,
    help="The cluster plan written by `facesets cluster`.",
)
@click.option(
    "--sets",
    "sets_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The face-set folder (default: the one the plan was made for).",
)
@click.option("--split-eras", is_flag=True, help="Also split each set by capture date into era folders.")
@click.option("--era-years", type=click.IntRange(min=1), default=5, show_default=True, help="Years per era.")
@click.option(
    "--min-era-faces", type=click.IntRange(min=1), help="Eras smaller than this go under _thin/ (default: --min-faces)."
)
@click.option("--no-report", is_flag=True, help="Skip the contact sheets and report.html.")
@click.option("--io-concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Decode threads.")
@json_option
def export_command(
    plan: Path,
    sets_dir: Path | None,
    split_eras: bool,
    era_years: int,
    min_era_faces: int | None,
    no_report: bool,
    io_concurrency: int,
    as_json: bool,
) -> None:
    """Apply a cluster plan: aligned 512x512 crops, manifests, era folders and the visual report.

    Safe to interrupt and re-run; applying the same plan twice changes nothing.

    Example: facesets export --plan clusters.json
    """
    summary = _export_plan(plan, sets_dir, split_eras, era_years, min_era_faces, no_report, io_concurrency, as_json)
    _emit(summary, as_json)


def _export_plan(
    plan: Path,
    sets_dir: Path | None,
    split_eras: bool,
    era_years: int,
    min_era_faces: int | None,
    no_report: bool,
    io_concurrency: int,
    as_json: bool = False,
) -> dict[str, Any]:
    from .export import ExportConfig, run_export

    config = ExportConfig(plan, sets_dir, split_eras, era_years, min_era_faces, not no_report, io_concurrency)
    return run_export(config, progress=_bar("export", "face", as_json)).as_dict()


EXPORT_OPTIONS = ("split_eras", "era_years", "min_era_faces", "no_report", "io_concurrency")


def cluster_then_export(prog_name: str) -> click.Command:
    """`facesets cluster --cache ...` and then `facesets export` of the plan it wrote, as one command (the
    original tool's step, ``work/cluster_immich.py``): the cache-mode options of cluster and export's own."""
    cluster_params = [p for p in cluster_command.params if p.name not in DATABASE_ONLY]
    export_params = [p for p in export_command.params if p.name in EXPORT_OPTIONS]

    def callback(**options: Any) -> None:
        if not options["caches"]:
            raise click.UsageError("--cache is required: the face cache(s) to cluster (e.g. caches/peter.npz)")
        clustered = _cluster_caches(**{p.name: options[p.name] for p in cluster_params if p.name})
        clustered = _learned_in_words(clustered, options["as_json"])
        exported = _export_plan(
            options["plan"], options["sets_dir"], as_json=options["as_json"], **{n: options[n] for n in EXPORT_OPTIONS}
        )
        if options["as_json"]:
            _emit({"cluster": clustered, "export": exported}, True)
            return
        click.echo("cluster")
        _emit(clustered, False)
        click.echo("export")
        _emit(exported, False)

    return click.Command(
        prog_name,
        params=[*cluster_params, *export_params],
        callback=callback,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        help="Cluster the face caches into a plan (as `facesets cluster --cache`), then export it into the face "
        "sets (as `facesets export`): the original tool's cluster step.\n\n"
        f"Example: python work/{prog_name} --cache caches/peter.npz --sets facesets_swap_ready",
    )


@cli.group()
def cache() -> None:
    """Inspect and combine face caches."""


@cache.command("info")
@click.argument("cache_path", metavar="CACHE", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def cache_info(cache_path: Path, as_json: bool) -> None:
    """Summarise a face cache: images, faces, no-face, errors, model, schema.

    Example: facesets cache info caches/faces.npz
    """
    from .cacheops import cache_summary

    _emit(cache_summary(cache_path), as_json)


@cache.command("extend")
@click.argument("master", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@json_option
def cache_extend(master: Path, parts: Sequence[Path], as_json: bool) -> None:
    """Fold per-user caches (PARTS) into MASTER: dedup by content hash, aliases merged, atomic.

    Caches made with a different recognizer are refused and MASTER is left unchanged.

    Example: facesets cache extend caches/master.npz caches/peter.npz caches/nic.npz
    """
    from .cacheops import extend_cache

    stats = extend_cache(master, list(parts), progress=_bar("extend", "cache", as_json))
    _emit({"master": str(master), **stats.as_dict()}, as_json)


@cli.group()
def queue() -> None:
    """Create and inspect queue.json work lists."""


@queue.command("add")
@click.option(
    "--queue",
    "queue_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="queue.json to create or append to.",
)
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--io-concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Hashing threads.")
@json_option
def queue_add(queue_path: Path, folders: Sequence[Path], io_concurrency: int, as_json: bool) -> None:
    """Queue every image file under FOLDERS (hashed with BLAKE3); already queued paths are kept once.

    Example: facesets queue add --queue queue.json /mnt/d/photos
    """
    from .progress import Progress
    from .queue import append_entries, scan_folders

    bar = None if as_json else lambda total: Progress(total, "hash", "file")
    result = scan_folders(list(folders), io_concurrency, progress=bar)
    for path, why in result.skipped:
        log.warning("skipping %s: %s", path, why)
    added = append_entries(queue_path, result.entries)
    counts = {"added": added, "already_queued": len(result.entries) - added, "skipped": len(result.skipped)}
    if as_json:
        _emit({"queue": str(queue_path), **counts}, True)
        return
    click.echo(f"{queue_path}: {added} added, {counts['already_queued']} already queued, {len(result.skipped)} skipped")


@queue.command("info")
@click.argument("queue_path", metavar="QUEUE", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def queue_info(queue_path: Path, as_json: bool) -> None:
    """Count the entries of a queue.json.

    Example: facesets queue info queue.json
    """
    from .queue import read_queue

    entries = read_queue(queue_path)
    windows = sum(1 for entry in entries if entry.windows_path)
    total = sum(entry.size for entry in entries)
    if as_json:
        _emit({"queue": str(queue_path), "entries": len(entries), "bytes": total, "with_windows_path": windows}, True)
        return
    click.echo(f"{queue_path}: {len(entries)} entries, {total / 1e6:.1f} MB, {windows} with a Windows path")


cli.add_command(immich)
cli.add_command(persons)
cli.add_command(search_command)
cli.add_command(similar_command)
cli.add_command(finalize_command)


def main(argv: Sequence[str] | None = None, command: click.Command | None = None, prog_name: str = "facesets") -> int:
    """Run the CLI (or one ``command`` of it under ``prog_name``, for the scripts of work/) and map errors to
    messages and exit codes; returns the exit code."""
    verbose, args = _take_verbosity(list(sys.argv[1:] if argv is None else argv))
    set_verbosity(verbose)
    if command is None:
        command, args = cli, ["-v"] * verbose + args
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except FacesetsError as exc:
        click.echo(f"error: {safe_lines(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            return _interrupted()
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        shown = io.StringIO()
        exc.show(file=shown)
        click.echo("\n".join(safe(line) for line in shown.getvalue().splitlines()), err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:  # what a library call did not turn into a message of its own
        click.echo(f"error: {safe(_os_message(exc))}", err=True)
        return 1
    except Exception as exc:  # never a traceback: the details with -vv
        log.debug("unexpected error", exc_info=True)
        if type(exc).__name__ == "DiskFull":  # psycopg's: the database server ran out of space
            click.echo(
                "error: the database server's disk is full: what was committed before is kept; free space on the "
                "server and run the same command again",
                err=True,
            )
            return 1
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(
            f"error: {safe(type(exc).__name__)}: {safe(first)} (run with -vv for the details; this is a bug in "
            "facesets, please report it)",
            err=True,
        )
        return 1
    return code if isinstance(code, int) else 0


def _os_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (
            f"the disk is full (writing{where}): what was written before is kept; free space and run the same "
            "command again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where or ' a file'}"
    return f"{exc.strerror or type(exc).__name__}:{where or ' (no file named)'}"


def _interrupted() -> int:
    click.echo("interrupted: what was flushed is kept; run the same command again to continue", err=True)
    return 130


def run() -> None:
    sys.exit(main())
