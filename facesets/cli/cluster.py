"""``facesets cluster`` and ``facesets export``: identities from face caches (or the database), and face sets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..artifacts.layout import PLAN
from ..base.errors import ConfigError
from ..base.settings import (
    DEFAULT_MIN_FACES,
    DEFAULT_PERSON_MIN_FACES,
)
from ..models.packs import DEFAULT_PACK
from .options import bar, database_options, emit, json_option, model_options, providers_option

ALGORITHMS = ("graph", "average", "components", "dbscan")  # clustering.Algorithm, without importing numpy


@click.command("cluster")
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
    from ..cluster.algorithms import Algorithm
    from ..store.database import DatabaseConfig
    from ..store.persons import PersonClusterConfig, run_person_cluster

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
        stats = run_person_cluster(person_config, progress=bar("cluster", "face", as_json))
        emit(_learned_in_words(stats.as_dict(), as_json), as_json)
        return
    if explicit_database or threshold is not None:
        raise click.UsageError(
            "--threshold and --database are for clustering the persons of the database; with --cache the face caches "
            "are clustered (--cluster-distance sets the distance there): pick one"
        )
    summary = _cluster_caches(**_cache_mode(click.get_current_context().params))
    emit(_learned_in_words(summary, as_json), as_json)


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
    from ..cluster.algorithms import Algorithm
    from ..cluster.identify import ClusterConfig, PackEmbedder, run_cluster
    from ..models.packs import resolve_pack

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
    return run_cluster(config, progress=bar("cluster", "face", as_json)).as_dict()


def _learned_in_words(summary: dict[str, Any], as_json: bool) -> dict[str, Any]:
    """The summary with its learned thresholds as one line a person reads (JSON keeps every figure)."""
    from ..cluster.calibration import describe

    if not as_json and summary.get("estimate"):
        summary["estimate"] = describe(summary["estimate"])
    return summary


@click.command("export")
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
    emit(summary, as_json)


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
    from ..export.sets import ExportConfig, run_export

    config = ExportConfig(plan, sets_dir, split_eras, era_years, min_era_faces, not no_report, io_concurrency)
    return run_export(config, progress=bar("export", "face", as_json)).as_dict()


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
            emit({"cluster": clustered, "export": exported}, True)
            return
        click.echo("cluster")
        emit(clustered, False)
        click.echo("export")
        emit(exported, False)

    return click.Command(
        prog_name,
        params=[*cluster_params, *export_params],
        callback=callback,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        help="Cluster the face caches into a plan (as `facesets cluster --cache`), then export it into the face "
        "sets (as `facesets export`): the original tool's cluster step.\n\n"
        f"Example: python work/{prog_name} --cache caches/peter.npz --sets facesets_swap_ready",
    )
