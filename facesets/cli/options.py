"""The option bundles and the output of every command: each option and each default defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from ..base.progress import Progress
from ..base.settings import DEFAULT_MAX_BYTES
from ..models.packs import DEFAULT_PACK, MODEL_ROOT_ENV
from ..store.database import DEFAULT_DATA

if TYPE_CHECKING:
    from ..embed.scheduler import DistributedConfig


def emit(data: dict[str, Any], as_json: bool) -> None:
    """Print a summary: aligned ``key  value`` lines a person reads, or indented JSON with ``--json``."""
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    width = max((len(key) for key in data), default=0)
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {human(key, value)}")


def human(key: str, value: Any) -> str:
    """One summary value in words: lists joined, yes/no, seconds with their unit, nested counters as k=v."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={human(k, v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(human(key, item) for item in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    if isinstance(value, int | float) and (key == "elapsed" or key.endswith("seconds")):
        return f"{value:.1f} s"
    return str(value)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (and no progress bar)."
)  # every command that prints a result takes it, with this one text


max_bytes_option = click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="Refuse files larger than this before reading them (a sparse file or a device named like a photo).",
)


def database_options(function: Any) -> Any:
    """--database (or $DATABASE_URL) and --data, shared by the commands that use the PostgreSQL store."""
    function = click.option(
        "--data",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_DATA,
        show_default=True,
        help="Data folder of the embedded PostgreSQL.",
    )(function)
    return click.option(
        "--database",
        envvar="DATABASE_URL",
        default=None,
        help="PostgreSQL URL (also $DATABASE_URL); without one the embedded server under --data is used.",
    )(function)


def _provider_list(_context: click.Context, _parameter: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(part for part in value.split(",") if part.strip())


def providers_option(function: Any) -> Any:
    """--providers, handed to the command as a tuple of names (empty: the best available)."""
    return click.option(
        "--providers",
        default="",
        callback=_provider_list,
        help="Execution providers in order, e.g. 'dml,cpu' or 'cuda,cpu' "
        "(default: the best available of DirectML, CUDA, CoreML, CPU).",
    )(function)


def model_options(function: Any) -> Any:
    """--model-dir and --model-pack: the face model pack."""
    function = click.option(
        "--model-pack",
        default=DEFAULT_PACK,
        show_default=True,
        help=f"Pack name, looked up under ${MODEL_ROOT_ENV}, then ~/.insightface/models.",
    )(function)
    return click.option(
        "--model-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="A pack folder holding the detector and recognizer .onnx files (overrides --model-pack).",
    )(function)


def bar(label: str, unit: str, as_json: bool) -> Any:
    """A progress factory for a stage (a bar on a terminal), none with --json."""

    return None if as_json else lambda total: Progress(total, label, unit)


def distributed_options(switch: str) -> Callable[[Any], Any]:
    """The options of an embed on Dask workers, each applying only with ``switch`` (``--scheduler``, or
    finalize's ``--embed dask``)."""

    def add(function: Any) -> Any:
        for option in reversed(
            (
                click.option(
                    "--shard-size",
                    type=click.IntRange(min=1),
                    default=64,
                    show_default=True,
                    help=f"With {switch}: the most images per unit of work sent to a worker (the last ones are "
                    "smaller, so that no worker idles while another finishes a big one).",
                ),
                click.option(
                    "--resources",
                    default="",
                    metavar="NAME=N[,...]",
                    help=f"With {switch}: each shard needs these worker resources, e.g. dml=1 for workers started "
                    'with `--resources "dml=1"`.',
                ),
                click.option(
                    "--path-map",
                    "path_maps",
                    multiple=True,
                    metavar="FROM=TO",
                    help=f"With {switch}: a worker reads a queued path (either form) that starts with FROM at TO "
                    "instead. Repeatable.",
                ),
                click.option(
                    "--ship-bytes",
                    is_flag=True,
                    help=f"With {switch}: send every image's bytes from this machine (workers that see no shared "
                    "folder). Without it, only the images a worker cannot find are sent.",
                ),
            )
        ):
            function = option(function)
        return function

    return add


DISTRIBUTED_PARAMETERS = ("shard_size", "resources", "path_maps", "ship_bytes")


def check_distributed(ctx: click.Context, enabled: bool, switch: str) -> None:
    """Refuse the distributed options without ``switch``, and an empty scheduler address."""
    scheduler = ctx.params.get("scheduler")
    if scheduler is not None and not str(scheduler).strip():
        raise click.BadParameter(
            "is empty: give the scheduler's address, like tcp://192.168.1.20:8786", param_hint="--scheduler"
        )
    given = [p.opts[0] for p in ctx.command.params if p.name in DISTRIBUTED_PARAMETERS and _given(ctx, str(p.name))]
    if given and not enabled:
        verb = "applies" if len(given) == 1 else "apply"
        raise click.UsageError(f"{', '.join(given)} {verb} only with {switch}")


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source is not click.core.ParameterSource.DEFAULT


def distributed_config(
    scheduler: str, shard_size: int, resources: str, path_maps: tuple[str, ...], ship_bytes: bool
) -> DistributedConfig:
    """The options as a :class:`facesets.embed.scheduler.DistributedConfig` (a bad value: a usage error)."""
    from ..base.errors import ConfigError
    from ..embed.scheduler import DistributedConfig, parse_resources
    from ..embed.shards import PathMap

    try:
        needs = parse_resources(resources)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--resources") from None
    try:
        maps = tuple(PathMap.parse(text) for text in path_maps)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--path-map "), param_hint="--path-map") from None
    return DistributedConfig(scheduler, shard_size, needs, maps, ship_bytes)
