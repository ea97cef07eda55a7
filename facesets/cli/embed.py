"""``facesets queue ...``, ``facesets embed`` and ``facesets cache ...``: a queue of images in, a face cache out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..base.messages import counted
from ..base.progress import Progress
from ..base.settings import (
    DEFAULT_DET_SIZES,
    DEFAULT_MAX_PIXELS,
    Mode,
)
from .options import (
    bar,
    check_distributed,
    distributed_config,
    distributed_options,
    emit,
    json_option,
    max_bytes_option,
    model_options,
    providers_option,
)

log = logging.getLogger(__name__)


def _parse_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of sizes") from None
    if not sizes or min(sizes) < 32:
        raise click.BadParameter("sizes must be at least 32 pixels")
    return sizes


@click.command()
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
    "detector input); 'fast' decodes big JPEGs at 1/2 to 1/8 (a long side of 1280; finer where a face needs it) "
    "and pads the detector input only to a multiple of 32: less work, keypoints and embeddings move slightly (see "
    "the README's performance figures).",
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
@max_bytes_option
@click.option("--retry-errors", is_flag=True, help="Try again images recorded as load errors.")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Embed on the workers of this Dask scheduler (tcp://host:8786) instead of here; this machine only "
    "records the cache. Workers: `dask worker ADDRESS` with two threads on each machine where facesets and the "
    "same model pack are installed (see the README). --concurrency, --providers and --model-dir then apply on "
    "each worker.",
)
@distributed_options("--scheduler")
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
    scheduler: str | None,
    shard_size: int,
    resources: str,
    path_maps: tuple[str, ...],
    ship_bytes: bool,
    as_json: bool,
) -> None:
    """Detect, align and embed the faces of every queued image into a face cache.

    Resumable: run the same command again after a crash and it continues where it stopped. With --scheduler
    the work runs on Dask workers (Linux and Windows machines at once) and this machine writes the cache.

    Example: facesets embed --queue queue.json --cache caches/faces.npz --model-pack buffalo_l
    """
    from ..embed.queue import EmbedConfig, EmbedStats, run_embed

    check_distributed(click.get_current_context(), bool(scheduler), "--scheduler")
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
    progress = lambda total: Progress(total, "embed", enabled=None if not as_json else False)  # noqa: E731
    stats: EmbedStats
    if scheduler:
        from ..embed.scheduler import run_distributed

        spread = distributed_config(scheduler, shard_size, resources, path_maps, ship_bytes)
        stats = run_distributed(config, spread, progress)
    else:
        stats = run_embed(config, progress)
    summary = {"cache": str(cache_path), **stats.as_dict()}
    if as_json or not scheduler:
        emit(summary, as_json)
        return
    workers: dict[str, dict[str, Any]] = summary.pop("workers")  # type: ignore[assignment]
    emit(summary, False)
    for name, worker in workers.items():
        counts = ", ".join(counted(worker[key], key.removesuffix("s")) for key in ("images", "faces", "errors"))
        click.echo(f"worker {name}: {counts}, {worker['img_s']} img/s")


@click.group()
def cache() -> None:
    """Inspect and combine face caches."""


@cache.command("info")
@click.argument("cache_path", metavar="CACHE", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def cache_info(cache_path: Path, as_json: bool) -> None:
    """Summarise a face cache: images, faces, no-face, errors, model, schema.

    Example: facesets cache info caches/faces.npz
    """
    from ..artifacts.cacheops import cache_summary

    emit(cache_summary(cache_path), as_json)


@cache.command("extend")
@click.argument("master", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@json_option
def cache_extend(master: Path, parts: Sequence[Path], as_json: bool) -> None:
    """Fold per-user caches (PARTS) into MASTER: dedup by content hash, aliases merged, atomic.

    Caches made with a different recognizer are refused and MASTER is left unchanged.

    Example: facesets cache extend caches/master.npz caches/peter.npz caches/nic.npz
    """
    from ..artifacts.cacheops import extend_cache

    stats = extend_cache(master, list(parts), progress=bar("extend", "cache", as_json))
    emit({"master": str(master), **stats.as_dict()}, as_json)


@click.group()
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
    from ..artifacts.queue import append_entries, scan_folders

    result = scan_folders(list(folders), io_concurrency, progress=bar("hash", "file", as_json))
    for path, why in result.skipped:
        log.warning("skipping %s: %s", path, why)
    added = append_entries(queue_path, result.entries)
    counts = {"added": added, "already_queued": len(result.entries) - added, "skipped": len(result.skipped)}
    if as_json:
        emit({"queue": str(queue_path), **counts}, True)
        return
    click.echo(f"{queue_path}: {added} added, {counts['already_queued']} already queued, {len(result.skipped)} skipped")


@queue.command("info")
@click.argument("queue_path", metavar="QUEUE", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def queue_info(queue_path: Path, as_json: bool) -> None:
    """Count the entries of a queue.json.

    Example: facesets queue info queue.json
    """
    from ..artifacts.queue import read_queue

    entries = read_queue(queue_path)
    windows = sum(1 for entry in entries if entry.windows_path)
    total = sum(entry.size for entry in entries)
    if as_json:
        emit({"queue": str(queue_path), "entries": len(entries), "bytes": total, "with_windows_path": windows}, True)
        return
    click.echo(f"{queue_path}: {len(entries)} entries, {total / 1e6:.1f} MB, {windows} with a Windows path")
