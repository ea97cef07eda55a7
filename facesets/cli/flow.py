"""``facesets finalize``: the per-user workflow after staging (embed -> cluster -> export -> load)."""

from __future__ import annotations

from pathlib import Path

import click

from ..base.errors import ConfigError
from ..base.settings import (
    DEFAULT_MIN_FACES,
)
from .options import (
    check_distributed,
    database_options,
    distributed_config,
    distributed_options,
    emit,
    json_option,
    model_options,
    providers_option,
)


def _steps(_context: click.Context, _parameter: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    allowed = ("embed", "cluster", "export", "load")
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise click.BadParameter(f"steps are a comma-separated list of {', '.join(allowed)}")
    return names


@click.command("finalize")
@click.option("--user", required=True, help="The user whose staged queue (staging/queue-<user>.json) is finished.")
@click.option(
    "--steps",
    default="embed,cluster,export,load",
    show_default=True,
    callback=_steps,
    help="Which steps to consider (finished ones with unchanged inputs are skipped).",
)
@click.option("--force", is_flag=True, help="Run the steps even if they finished with the same inputs.")
@click.option(
    "--embed",
    "embed_where",
    type=click.Choice(["auto", "local", "windows", "dask"]),
    envvar="EMBED",
    default="auto",
    show_default=True,
    help="Where the embed step runs: windows = the Windows side of WSL (WIN_ROOT, WIN_PYTHON); dask = the workers "
    "of --scheduler (DASK_SCHEDULER); auto = windows under WSL when both WIN_ variables are set, else local.",
)
@click.option(
    "--scheduler",
    envvar="DASK_SCHEDULER",
    metavar="ADDRESS",
    help="With --embed dask: the Dask scheduler whose workers embed, e.g. tcp://192.168.1.20:8786 "
    "(also $DASK_SCHEDULER).",
)
@click.option(
    "--win-root",
    envvar="WIN_ROOT",
    type=click.Path(path_type=Path, file_okay=False),
    help="Windows-side work folder as seen from WSL, e.g. /mnt/c/face_embed (also $WIN_ROOT).",
)
@click.option(
    "--win-python",
    envvar="WIN_PYTHON",
    help="The Windows Python that runs `-m facesets embed`, e.g. C:\\face_embed\\.venv\\Scripts\\python.exe "
    "(also $WIN_PYTHON).",
)
@click.option(
    "--win-worker",
    envvar="WIN_WORKER",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Run this work/embed_worker.py of a checkout (as seen from WSL) instead, when facesets is not installed "
    "on the Windows side (also $WIN_WORKER).",
)
@click.option(
    "--staging",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("staging"),
    show_default=True,
    help="The staging folder: queue-<user>.json, and finalize-<user>.json where the finished steps are recorded.",
)
@click.option(
    "--caches",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("caches"),
    show_default=True,
    help="Where <user>.npz is written (and other caches to load are found).",
)
@click.option(
    "--sets",
    "sets_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("facesets_swap_ready"),
    show_default=True,
    help="The face-set folder that cluster reads, export writes and load maps to persons.",
)
@click.option("--split-eras", is_flag=True, help="Export also splits sets by capture date.")
@click.option(
    "--min-faces", type=click.IntRange(min=1), default=DEFAULT_MIN_FACES, show_default=True, help="Smallest new set."
)
@distributed_options("--embed dask")
@database_options
@model_options
@providers_option
@json_option
def finalize_command(
    user: str,
    steps: tuple[str, ...],
    force: bool,
    embed_where: str,
    win_root: Path | None,
    win_python: str | None,
    win_worker: Path | None,
    scheduler: str | None,
    shard_size: int,
    resources: str,
    path_maps: tuple[str, ...],
    ship_bytes: bool,
    staging: Path,
    caches: Path,
    sets_dir: Path,
    split_eras: bool,
    min_faces: int,
    database: str | None,
    data: Path,
    model_dir: Path | None,
    model_pack: str,
    providers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Finish a user's staged photos: embed -> cluster -> export -> load, resuming where it stopped.

    Each finished step is recorded in staging/finalize-<user>.json with the BLAKE3 of its inputs: a re-run skips
    finished steps, resumes the one that failed or was killed, and re-runs the steps whose inputs changed.

    Example: facesets finalize --user nic --embed windows --win-root /mnt/c/face_embed --win-python py
    """
    from ..flow.finalize import FinalizeConfig, Step, run_finalize
    from ..flow.winside import WindowsSide, running_under_wsl
    from ..store.database import DatabaseConfig

    ctx = click.get_current_context()
    dask = embed_where == "dask"
    check_distributed(ctx, dask, "--embed dask")
    if scheduler and not dask and ctx.get_parameter_source("scheduler") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--scheduler applies only with --embed dask")
    if dask and not scheduler:
        raise ConfigError("--embed dask needs --scheduler (DASK_SCHEDULER), e.g. tcp://192.168.1.20:8786")
    side = None
    wants_windows = embed_where == "windows" or (
        embed_where == "auto" and running_under_wsl() and bool(win_root) and bool(win_python)
    )
    if wants_windows:
        if not win_root or not win_python:
            raise ConfigError("--embed windows needs --win-root (WIN_ROOT) and --win-python (WIN_PYTHON)")
        options = ("--providers", ",".join(providers)) if providers else ()
        side = WindowsSide(win_root, win_python, win_worker, options=options)
    config = FinalizeConfig(
        user=user,
        staging=staging,
        caches=caches,
        sets_dir=sets_dir,
        database=DatabaseConfig(database, data),
        steps=tuple(Step(name) for name in steps),
        force=force,
        model_dir=model_dir,
        model_pack=model_pack,
        providers=providers,
        embed_side=side,
        spread=distributed_config(scheduler, shard_size, resources, path_maps, ship_bytes)
        if dask and scheduler
        else None,
        split_eras=split_eras,
        min_faces=min_faces,
        progress=not as_json,
    )
    summary = run_finalize(config, announce=lambda line: click.echo(line, err=True))
    result = summary.as_dict()
    if not as_json:
        result = {key: value for key, value in result.items() if key != "results"}
        result["ran"] = ", ".join(summary.ran) or "-"
        result["skipped"] = ", ".join(summary.skipped) or "-"
    emit(result, as_json)
