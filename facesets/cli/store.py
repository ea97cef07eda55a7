"""The commands on the PostgreSQL store: ``migrate``, ``load``, ``persons ...``, ``search`` and ``similar``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import orjson

from .options import bar, database_options, emit, json_option, providers_option


@click.command("migrate")
@database_options
@json_option
def migrate(database: str | None, data: Path, as_json: bool) -> None:
    """Create or update the database schema (numbered migrations; safe to run twice or concurrently).

    Example: facesets migrate --database 'postgresql://faces@db.lan/faces?sslmode=require'
    """
    from ..store.database import DatabaseConfig, connect, database_url, describe
    from ..store.migrations import LATEST
    from ..store.migrations import migrate as run_migrations

    with database_url(DatabaseConfig(database, data)) as url, connect(url) as conn:
        applied = run_migrations(conn)
        if as_json:
            done = [{"version": migration.version, "name": migration.name} for migration in applied]
            emit({"database": describe(url), "applied": done, "schema": LATEST}, True)
            return
        for migration in applied:
            click.echo(f"applied migration {migration.version}: {migration.name}")
        click.echo(f"{describe(url)}: schema at version {LATEST}" + ("" if applied else " (already up to date)"))


@click.command()
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
    from ..store.database import DatabaseConfig
    from ..store.load import LoadConfig, run_load

    config = LoadConfig(
        DatabaseConfig(database, data), caches, tuple(extra_caches), clip_model, batch, sets_dir, workers
    )
    emit(run_load(config, progress=bar("load", "face", as_json)).as_dict(), as_json)


def _store(database: str | None, data: Path) -> Any:
    from ..store.database import DatabaseConfig, open_store

    return open_store(DatabaseConfig(database, data, must_exist=True))


def _print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _print_rows(rows: list[dict[str, Any]], as_lines: bool) -> None:
    """Rows as one JSON array (``--json``) or one JSON object per line (``--nl``)."""
    if not as_lines:
        _print_json(rows)
        return
    for row in rows:
        click.echo(orjson.dumps(row).decode())


@click.group()
def persons() -> None:
    """Look at, name, merge, reset and correct the persons of the database.

    PERSON is a person's number, its name (any case) or a face set it came from (faceset_007).
    """


@persons.command("list")
@database_options
@click.option("--hidden", is_flag=True, help="List the hidden persons instead (see `persons hide`).")
@json_option
@click.option("--nl", "as_lines", is_flag=True, help="Print one JSON object per line.")
def persons_list(database: str | None, data: Path, hidden: bool, as_json: bool, as_lines: bool) -> None:
    """Every person with its name, faces (by hand = from face sets or assigned by hand), photos and face sets.

    Example: facesets persons list
    """
    from ..store.personops import list_persons

    with _store(database, data) as conn:
        rows = list_persons(conn, hidden)
    if as_json or as_lines:
        _print_rows([row.to_dict() for row in rows], as_lines)
        return
    click.echo(f"{'person':>7}  {'faces':>6}  {'by hand':>7}  {'photos':>6}  name / face sets")
    for row in rows:
        sets = " ".join(f"faceset_{n:03d}" for n in row.face_sets)
        label = " ".join(part for part in (row.name or "-", f"[{sets}]" if sets else "") if part)
        click.echo(f"{row.id:>7}  {row.faces:>6}  {row.by_hand:>7}  {row.photos:>6}  {label}")


@persons.command("show")
@click.argument("person")
@database_options
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Faces to list.")
@json_option
@click.option("--nl", "as_lines", is_flag=True, help="Print one JSON object per line.")
def persons_show(person: str, database: str | None, data: Path, limit: int, as_json: bool, as_lines: bool) -> None:
    """The faces of PERSON: face number (for `persons not`), photo path, score, who assigned it.

    Example: facesets persons show Ann
    """
    from ..store.personops import person_faces, resolve_person

    with _store(database, data) as conn:
        faces = person_faces(conn, resolve_person(conn, person), limit)
    if as_json or as_lines:
        _print_rows([face.to_dict() for face in faces], as_lines)
        return
    for face in faces:
        where = ", ".join(face.paths) or face.image
        click.echo(f"{face.face:>9}  {face.score:.3f}  {face.assigned_by or '-':<8} {where}")


@persons.command("name")
@click.argument("person")
@click.argument("name")
@database_options
@json_option
def persons_name(person: str, name: str, database: str | None, data: Path, as_json: bool) -> None:
    """Give PERSON the name NAME (names are unique, any case).

    Example: facesets persons name 12 "Ann Smith"
    """
    from ..store.activity import recorded
    from ..store.personops import name_person, resolve_person

    named = " ".join(name.split())
    with _store(database, data) as conn:
        person_id = resolve_person(conn, person)
        recorded(conn, f"named person {person_id} {named!r}", (), (person_id,),
                 lambda: name_person(conn, person_id, name))  # fmt: skip
    if as_json:
        _print_json({"person": person_id, "name": named})
        return
    click.echo(f"person {person_id} is now {named}")


@persons.command("merge")
@click.argument("keep")
@click.argument("others", nargs=-1, required=True)
@database_options
@json_option
def persons_merge(keep: str, others: tuple[str, ...], database: str | None, data: Path, as_json: bool) -> None:
    """Merge the persons OTHERS into KEEP: their faces, face sets and "not this person" records move.

    Example: facesets persons merge Ann 17 23
    """
    from ..store.activity import recorded
    from ..store.personops import merge_persons, resolve_person

    with _store(database, data) as conn:
        kept = resolve_person(conn, keep)
        gone = [resolve_person(conn, ref) for ref in others]
        summary = f"merged person {', '.join(map(str, gone))} into person {kept}"
        emit(recorded(conn, summary, (), (kept, *gone), lambda: merge_persons(conn, kept, gone)), as_json)


@persons.command("reset")
@click.option("--person", default=None, help="Reset this person only (default: every person).")
@click.option("--names", is_flag=True, help="Reset named and merged persons too (their clustering faces go).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@database_options
@json_option
def persons_reset(person: str | None, names: bool, yes: bool, database: str | None, data: Path, as_json: bool) -> None:
    """Undo clustering: unassign the faces it assigned and remove persons left with no face.

    Named persons and persons others were merged into are kept whole (naming and merging are your work) unless
    --names is given. Faces from face sets or assigned by hand always stay, and so do their persons' names.

    Example: facesets persons reset --person 17 --yes
    """
    from ..store.personops import reset_persons, resolve_person

    with _store(database, data) as conn:
        person_id = resolve_person(conn, person) if person is not None else None
        what = f"person {person_id}" if person_id is not None else "every person"
        if not yes:
            click.confirm(f"Unassign the faces clustering gave {what}?", abort=True)
        emit(reset_persons(conn, person_id, names), as_json)


@persons.command("not")
@click.argument("face", type=int)
@click.argument("person")
@database_options
@json_option
def persons_not(face: int, person: str, database: str | None, data: Path, as_json: bool) -> None:
    """Record that FACE (a number from `persons show`) is not PERSON; no clustering will put it back.

    Example: facesets persons not 4711 Ann
    """
    from ..store.activity import recorded
    from ..store.personops import not_person, resolve_person

    with _store(database, data) as conn:
        person_id = resolve_person(conn, person)
        result = recorded(conn, f"face {face} is not person {person_id}", (face,), (person_id,),
                          lambda: not_person(conn, face, person_id))  # fmt: skip
    if as_json:
        _print_json(result)
        return
    action = "unassigned and recorded" if result["unassigned"] else "recorded"
    click.echo(f"face {face} is not person {result['person']}: {action}")


@persons.command("assign")
@click.argument("face", type=int)
@click.argument("person")
@click.option("--move-other", is_flag=True, help="If PERSON has another face of the same photo, unassign that one.")
@database_options
@json_option
def persons_assign(face: int, person: str, move_other: bool, database: str | None, data: Path, as_json: bool) -> None:
    """Put FACE in PERSON by hand (kept by reset and by clustering).

    A photo shows a person once: when PERSON already has another face of FACE's photo this is refused, unless
    --move-other takes that face out of PERSON.

    Example: facesets persons assign 4711 Ann
    """
    from ..store.activity import recorded
    from ..store.personops import assign_face, resolve_person

    with _store(database, data) as conn:
        person_id = resolve_person(conn, person)
        result = recorded(conn, f"face {face} is person {person_id}", (face,), (person_id,),
                          lambda: assign_face(conn, face, person_id, move_other))  # fmt: skip
    if as_json:
        _print_json(result)
        return
    moved = f"; face {', '.join(map(str, result['moved_out']))} moved out of it" if result["moved_out"] else ""
    lifted = "; the record that it is not this person was lifted" if result["lifted_not_person"] else ""
    click.echo(f"face {face} is person {result['person']} (by hand){moved}{lifted}")


@persons.command("unassigned")
@database_options
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Faces to list.")
@json_option
@click.option("--nl", "as_lines", is_flag=True, help="Print one JSON object per line.")
def persons_unassigned(database: str | None, data: Path, limit: int, as_json: bool, as_lines: bool) -> None:
    """Faces with no person, each with the person whose centre is nearest (its cosine distance).

    Use `persons assign FACE PERSON` to take a candidate, `persons not FACE PERSON` to rule it out.

    Example: facesets persons unassigned --limit 20
    """
    from ..store.personops import unassigned_faces

    with _store(database, data) as conn:
        total, faces = unassigned_faces(conn, limit)
    if as_json:
        _print_json({"unassigned": total, "faces": [face.to_dict() for face in faces]})
        return
    if as_lines:
        _print_rows([face.to_dict() for face in faces], True)
        return
    click.echo(f"{total} faces have no person" + (f"; the first {len(faces)}:" if faces else ""))
    for face in faces:
        where = ", ".join(face.paths) or face.image
        if face.candidate is None:
            best = "no candidate"
        else:
            label = f"{face.candidate} ({face.candidate_name})" if face.candidate_name else str(face.candidate)
            best = f"nearest {label} at {face.distance:.3f}"
        click.echo(f"{face.face:>9}  {face.score:.3f}  {best:<36} {where}")


@persons.command("hide")
@click.argument("person")
@database_options
@json_option
def persons_hide(person: str, database: str | None, data: Path, as_json: bool) -> None:
    """Hide PERSON: out of `persons list` (see `list --hidden`), and clustering adds no face to it.

    Example: facesets persons hide 31
    """
    _set_hidden(person, database, data, True, as_json)


@persons.command("unhide")
@click.argument("person")
@database_options
@json_option
def persons_unhide(person: str, database: str | None, data: Path, as_json: bool) -> None:
    """Show PERSON again in `persons list`; clustering may add faces to it again.

    Example: facesets persons unhide 31
    """
    _set_hidden(person, database, data, False, as_json)


@persons.command("activity")
@database_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Changes to list.")
@json_option
def persons_activity(database: str | None, data: Path, limit: int, as_json: bool) -> None:
    """The latest changes to persons, by these commands and by the review page, newest first.

    Example: facesets persons activity --limit 5
    """
    from ..store.activity import recent

    with _store(database, data) as conn:
        actions = recent(conn, limit)
    if as_json:
        _print_json([asdict(action) for action in actions])
        return
    for action in actions:
        click.echo(f"{action.at}  {action.summary}{'  (undone)' if action.undone else ''}")
    if not actions:
        click.echo("no change yet")


@persons.command("undo")
@database_options
@json_option
def persons_undo(database: str | None, data: Path, as_json: bool) -> None:
    """Undo the latest change to persons not undone yet (run again for the one before), as the review page does.

    Example: facesets persons undo
    """
    from ..store.activity import undo_last

    with _store(database, data) as conn:
        action = undo_last(conn)
    if as_json:
        _print_json(asdict(action))
        return
    click.echo(f"undone: {action.summary} ({action.at})")


def _set_hidden(person: str, database: str | None, data: Path, hidden: bool, as_json: bool) -> None:
    from ..store.activity import recorded
    from ..store.personops import hide_person, resolve_person

    with _store(database, data) as conn:
        person_id = resolve_person(conn, person)
        result = recorded(conn, f"{'hid' if hidden else 'unhid'} person {person_id}", (), (person_id,),
                          lambda: hide_person(conn, person_id, hidden))  # fmt: skip
    if as_json:
        _print_json(result)
        return
    click.echo(f"person {result['person']} is {'hidden' if hidden else 'shown'}")


def _search_options(function: Any) -> Any:
    function = providers_option(function)
    function = click.option("--nl", "as_lines", is_flag=True, help="Print one JSON object per hit and line.")(function)
    function = json_option(function)
    function = click.option(
        "--clip-model", default=None, help="CLIP model folder name (default: the model the database holds)."
    )(function)
    function = click.option(
        "--clip-dir", type=click.Path(path_type=Path, file_okay=False), help="The CLIP model folder itself."
    )(function)
    function = click.option(
        "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Images to list."
    )(function)
    function = click.option("--person", default=None, help="Only photos of this person (number, name, faceset_NNN).")(
        function
    )
    return database_options(function)


def _print_hits(hits: list[Any], as_json: bool, as_lines: bool) -> None:
    if as_json or as_lines:
        _print_rows([hit.to_dict() for hit in hits], as_lines)
        return
    for hit in hits:
        where = ", ".join(hit.paths) or hit.image
        assets = f"  (immich {', '.join(hit.immich_assets)})" if hit.immich_assets else ""
        click.echo(f"{hit.score:.4f}  {where}{assets}")


@click.command("search")
@click.argument("text")
@_search_options
def search_command(
    text: str,
    database: str | None,
    data: Path,
    person: str | None,
    limit: int,
    clip_dir: Path | None,
    clip_model: str | None,
    as_json: bool,
    as_lines: bool,
    providers: tuple[str, ...],
) -> None:
    """Images ranked by how well they match TEXT (CLIP), best first: score and paths (and Immich assets).

    Example: facesets search "birthday cake on a table" --person Ann --limit 10
    """
    from ..models.cliptext import ClipText
    from ..models.runtime import runtime_options
    from ..store.personops import resolve_person
    from ..store.search import check_clip_model, clip_folder, nearest_images

    options = runtime_options(providers)
    with _store(database, data) as conn:
        person_id = resolve_person(conn, person) if person is not None else None
        folder = clip_folder(conn, clip_dir, clip_model)
        check_clip_model(conn, folder)
        vector = ClipText(folder, options).embed(text)
        hits = nearest_images(conn, vector, limit, person_id)
    _print_hits(hits, as_json, as_lines)


@click.command("similar")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_search_options
def similar_command(
    image: Path,
    database: str | None,
    data: Path,
    person: str | None,
    limit: int,
    clip_dir: Path | None,
    clip_model: str | None,
    as_json: bool,
    as_lines: bool,
    providers: tuple[str, ...],
) -> None:
    """Images that look like IMAGE (CLIP), best first; IMAGE itself is left out.

    Example: facesets similar ~/Pictures/beach.jpg --limit 10
    """
    from ..store.personops import resolve_person
    from ..store.search import clip_folder, image_vector, nearest_images

    with _store(database, data) as conn:
        person_id = resolve_person(conn, person) if person is not None else None
        vector, digest = image_vector(conn, image, lambda: clip_folder(conn, clip_dir, clip_model), providers)
        hits = nearest_images(conn, vector, limit, person_id, exclude=digest)
    _print_hits(hits, as_json, as_lines)
