"""``facesets index`` and ``facesets backfill``: local galleries into the face cache and the index state."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..models.clip import CLIP_ROOT_ENV, DEFAULT_CLIP_MODEL
from .options import bar, emit, json_option, max_bytes_option, model_options, providers_option


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


@click.command()
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
@max_bytes_option
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
    from ..embed.index import IndexConfig, run_index

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
    stats = run_index(config, progress=bar("index", "img", as_json))
    emit(_load_into(database, caches, stats.as_dict(), False, as_json), as_json)


@click.command("backfill")
@_target_options
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="stat() threads.")
@json_option
def backfill(targets: Sequence[Path], caches: Path, database: str | None, concurrency: int, as_json: bool) -> None:
    """Stat only, no reads, no models: fill file sizes and gallery count/bytes of galleries already indexed
    (with --database, in the database too).

    Example: facesets backfill --target /mnt/d/galleries --caches caches --database "$DATABASE_URL"
    """
    from ..embed.backfill import run_backfill

    _check_store(database)
    stats = run_backfill(list(targets), caches, concurrency)
    emit(_load_into(database, caches, stats.as_dict(), True, as_json), as_json)


def _check_store(database: str | None) -> None:
    """Before a long run: the database named by --database is reachable and has the schema."""
    if database:
        from ..store.database import DatabaseConfig, open_store

        with open_store(DatabaseConfig(url=database)):
            pass


def _load_into(
    database: str | None, caches: Path, result: dict[str, Any], galleries_only: bool, as_json: bool
) -> dict[str, Any]:
    """The run's counters, and with --database what loading the caches folder into it added."""
    if not database:
        return result
    from ..store.database import DatabaseConfig
    from ..store.load import LoadConfig, run_load

    config = LoadConfig(DatabaseConfig(url=database), caches=caches, galleries_only=galleries_only)
    loaded = run_load(config, progress=bar("load", "face", as_json))
    return {**result, "database": loaded.as_dict()}
