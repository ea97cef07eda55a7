"""``facesets serve``: the local review page on the PostgreSQL store."""

from __future__ import annotations

import secrets
import webbrowser
from pathlib import Path

import click

from ..base.errors import ConfigError
from .options import database_options


@click.command("serve")
@database_options
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (not loopback: needs a token)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A file holding the token every request must carry (default for a non-loopback --host: a new one, printed).",
)
@click.option(
    "--crops",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("caches") / "crops",
    show_default=True,
    help="Folder for the face crops the page cuts from the photos (a cache: safe to delete).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
def serve(
    database: str | None, data: Path, host: str, port: int, token_file: Path | None, crops: Path, open_browser: bool
) -> None:
    """Review, name and correct the persons of the store in a web page on this machine.

    People, a person's faces (not this person, move, new person, cover face), merge suggestions, the
    unassigned faces with their best candidate (keyboard: a, r, s, n, p) and each photo with its faces boxed.
    Every change is the same call the `persons` commands make. Stop with Ctrl-C.

    Example: facesets serve --data demo/pg --open
    """
    try:
        import uvicorn

        from ..review.app import LOOPBACK, ReviewConfig, make_app
    except ImportError as exc:
        raise ConfigError(
            f"the review page needs {exc.name or 'its packages'}: pip install -e '.[review]' (Starlette, Jinja2, "
            "python-multipart, uvicorn)"
        ) from exc
    from ..store.database import DatabaseConfig, connect, database_url
    from ..store.migrations import check_schema

    token = _token(host, token_file, LOOPBACK)
    with database_url(DatabaseConfig(database, data, must_exist=True)) as url:
        with connect(url) as conn:
            check_schema(conn)
        app = make_app(ReviewConfig(url, crops, token, loopback_only=token is None))
        address = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        shown = address + (f"?token={token}" if token else "")
        click.echo(f"review page: {shown} (Ctrl-C stops it)")
        if open_browser:
            webbrowser.open(shown)
        uvicorn.run(app, host=host, port=port, log_level="warning")


def _token(host: str, token_file: Path | None, loopback: tuple[str, ...]) -> str | None:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {token_file}: {exc.strerror or exc}") from exc
        if len(token) < 16:
            raise ConfigError(f"the token in {token_file} is too short: use at least 16 characters")
        return token
    if host in loopback:
        return None
    return secrets.token_urlsafe(24)
