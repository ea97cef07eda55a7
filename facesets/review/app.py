"""The review page: a small ASGI app (Starlette, Jinja2 templates, htmx) on the PostgreSQL store.

Pages: people (``/``), a person (``/person/N``), the unassigned faces (``/unassigned``), a photo
(``/photo/ID``). Every change is a POST that calls one :mod:`facesets.store.personops` function (one
transaction each), so a CLI command or ``facesets cluster --database`` may run at the same time.

Security: a request must name this server by a loopback host (no DNS rebinding) unless a token is set; with a
token (required for a non-loopback bind) every request carries it, once in the URL and then as a cookie; a POST
carries the page's CSRF token; images are looked up by their id in the store, never by a path from a request;
everything shown is escaped by the templates; nothing is written but the crop cache.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..base.errors import ConfigError, DatabaseError, FacesetsError, ImageLoadError, ModelPackError, PersonError
from ..base.messages import counted
from ..models.runtime import Lazy, runtime_options
from ..store import personops
from ..store.activity import recent, recorded, undo_last
from ..store.database import connect
from ..store.persons import look_alike_groups
from ..store.search import check_clip_model, clip_folder, nearest_images
from . import images, queries

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
COOKIE = "facesets_token"
SEARCH_LIMIT = 60  # photos a text search shows


@dataclass(frozen=True)
class ReviewConfig:
    url: str  # the store
    crops: Path  # the crop cache folder
    token: str | None = None  # required on every request when set
    loopback_only: bool = True  # refuse a Host header that is not a loopback name (when there is no token)


def make_app(config: ReviewConfig) -> Starlette:
    csrf = secrets.token_urlsafe(24)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["csrf"] = csrf
    view = _Views(config, templates)
    routes = [
        Route("/", view.people),
        Route("/person/{person:int}", view.person),
        Route("/person/{person:int}/name", view.rename, methods=["POST"]),
        Route("/person/{person:int}/hide", view.hide, methods=["POST"]),
        Route("/person/{person:int}/merge", view.merge, methods=["POST"]),
        Route("/person/{person:int}/faces", view.faces_action, methods=["POST"]),
        Route("/person/{person:int}/cover", view.cover, methods=["POST"]),
        Route("/unassigned", view.unassigned),
        Route("/activity", view.activity),
        Route("/undo", view.undo, methods=["POST"]),
        Route("/face/{face:int}/accept", view.accept, methods=["POST"]),
        Route("/face/{face:int}/reject", view.reject, methods=["POST"]),
        Route("/dismiss", view.dismiss, methods=["POST"]),
        Route("/group", view.group, methods=["POST"]),
        Route("/photo/{image:str}", view.photo),
        Route("/search", view.search),
        Route("/thumb/{image:str}.jpg", view.thumb),
        Route("/crop/{face:int}.jpg", view.crop),
        Route("/image/{image:str}.jpg", view.image),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    guard = Middleware(BaseHTTPMiddleware, dispatch=_guard(config, csrf))
    return Starlette(routes=routes, middleware=[guard], exception_handlers={FacesetsError: _failed})


def _guard(config: ReviewConfig, csrf: str) -> Callable[[Request, Any], Awaitable[Response]]:
    async def dispatch(request: Request, call_next: Any) -> Response:
        host = _hostname(request.headers.get("host", ""))
        if config.token is None and config.loopback_only and host not in LOOPBACK:
            return PlainTextResponse("this page answers only on 127.0.0.1 (start it with --token to serve others)", 421)
        if config.token is not None:
            given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
            if not hmac.compare_digest(given.encode(), config.token.encode()):
                return PlainTextResponse("a token is needed: open the address facesets serve printed", 401)
            if "token" in request.query_params:  # once in the URL, then as a cookie
                response: Response = RedirectResponse(request.url.path, 303)
                response.set_cookie(COOKIE, config.token, httponly=True, samesite="strict")
                return response
        if request.method == "POST":
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode(), csrf.encode()):
                return PlainTextResponse("this form is out of date: reload the page", 403)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return dispatch


def _hostname(header: str) -> str:
    """The name of a Host header, without its port (``[::1]:8000`` -> ``[::1]``)."""
    return header.split("]")[0] + "]" if header.startswith("[") else header.rsplit(":", 1)[0]


async def _failed(request: Request, exc: Exception) -> Response:
    """A library error (a refused action, say) as its message, for htmx to show where the action was."""
    return PlainTextResponse(str(exc), 409 if isinstance(exc, PersonError) else 400)


def _common_candidate(faces: list[Any], match: float | None) -> Any:
    """The face whose candidate every face of a group shares, when all are within the model's match distance of
    that person (a group is offered to a person only then); None otherwise."""
    first = faces[0]
    if match is None or first.candidate is None:
        return None
    near = all(f.candidate == first.candidate and f.distance is not None and f.distance <= match for f in faces)
    return first if near else None


def _count(faces: list[int]) -> str:
    return counted(len(faces), "face")


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise PersonError(f"{str(value)[:40]!r} is not a number") from None


class _Views:
    def __init__(self, config: ReviewConfig, templates: Jinja2Templates) -> None:
        self.config = config
        self.templates = templates
        self._text_towers: dict[Path, Lazy[Any]] = {}  # CLIP text towers by model folder, made on first use
        self._towers_lock = threading.Lock()

    def _text_tower(self, folder: Path) -> Any:
        from ..models.cliptext import ClipText

        with self._towers_lock:
            tower = self._text_towers.setdefault(folder, Lazy(lambda: ClipText(folder, runtime_options())))
        return tower.get()

    def _page(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, context)

    # -- pages ---------------------------------------------------------------------------------------------

    async def people(self, request: Request) -> Response:
        show = request.query_params.get("show", "all")
        if show not in queries.FILTERS:
            show = "all"
        page = max(0, _int(request.query_params.get("page", "0")))
        with connect(self.config.url) as conn:
            count, persons = queries.people(conn, show, page)
            names = queries.person_names(conn)
            total, _ = personops.unassigned_faces(conn, 0)
        pages = (count + queries.PEOPLE_PAGE - 1) // queries.PEOPLE_PAGE
        return self._page(
            request, "people.html", persons=persons, count=count, show=show, names=names, unassigned=total,
            page=page, pages=pages,
        )  # fmt: skip

    async def person(self, request: Request) -> Response:
        person_id = request.path_params["person"]
        page = max(0, _int(request.query_params.get("page", "0")))
        uncertain = request.query_params.get("order") == "uncertain"
        with connect(self.config.url) as conn:
            person = queries.person(conn, person_id)
            if person is None:
                return PlainTextResponse(f"no person {person_id}", 404)
            middle = queries.centre(conn, person_id)
            faces = queries.person_faces(conn, person_id, page, uncertain, middle)
            suggestions = queries.merge_suggestions(conn, person_id, middle)
            names = queries.person_names(conn)
        pages = (person.faces + queries.PAGE - 1) // queries.PAGE
        return self._page(
            request, "person.html", person=person, faces=faces, page=page, pages=pages, uncertain=uncertain,
            suggestions=suggestions, names=names,
        )  # fmt: skip

    async def unassigned(self, request: Request) -> Response:
        """The unassigned faces, those too blurred or small to tell apart (to dismiss at once)."""
        with connect(self.config.url) as conn:
            total, faces = personops.unassigned_faces(conn, 200)
            cutoff = queries.poor_cutoff(conn)
            poor = [face for face in faces if cutoff is not None and face.norm is not None and face.norm < cutoff]
            poor_ids = {face.face for face in poor}
            sure = [face for face in faces if face.face not in poor_ids]
            by_face = {face.face: face for face in sure}
            groups = [[by_face[face] for face in group] for group in look_alike_groups(conn, list(by_face))]
            match = queries.match_distance(conn)
        grouped = {face.face for group in groups for face in group}
        return self._page(
            request, "unassigned.html", total=total, poor=poor, faces=[f for f in sure if f.face not in grouped],
            groups=[(group, _common_candidate(group, match)) for group in groups],
        )  # fmt: skip

    async def photo(self, request: Request) -> Response:
        image = request.path_params["image"]
        with connect(self.config.url) as conn:
            path = queries.known_path(conn, image)
            faces = queries.photo_faces(conn, image)
        if path is None:
            return PlainTextResponse("no such photo in the store", 404)
        try:
            _, scale = images.photo(path)
        except (OSError, ImageLoadError) as exc:
            return PlainTextResponse(f"the photo cannot be read: {exc}", 410)
        return self._page(request, "photo.html", image=image, path=path, faces=faces, scale=scale)

    async def search(self, request: Request) -> Response:
        """Photos that match a text (CLIP), where the store holds CLIP vectors; a note that says how otherwise."""
        text = request.query_params.get("q", "").strip()[:500]
        hits: list[Any] = []
        note = ""
        if text:
            with connect(self.config.url) as conn:
                try:
                    folder = clip_folder(conn)
                    check_clip_model(conn, folder)
                    hits = nearest_images(conn, self._text_tower(folder).embed(text), SEARCH_LIMIT)
                except (DatabaseError, ModelPackError, ConfigError) as exc:
                    note = str(exc)
        return self._page(request, "search.html", text=text, hits=hits, note=note)

    # -- images --------------------------------------------------------------------------------------------

    async def thumb(self, request: Request) -> Response:
        return await self._photo_file(request, images.THUMB_SIDE)

    async def crop(self, request: Request) -> Response:
        face = request.path_params["face"]
        with connect(self.config.url) as conn:
            source = queries.face_source(conn, face)
            path = queries.known_path(conn, source[0]) if source else None
        if source is None or path is None:
            return PlainTextResponse("no such face", 404)
        try:
            data = images.face_crop(path, source[1], self.config.crops, face)
        except (OSError, ImageLoadError):
            return PlainTextResponse("the photo of this face cannot be read", 410)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    async def image(self, request: Request) -> Response:
        return await self._photo_file(request, images.PHOTO_SIDE)

    async def _photo_file(self, request: Request, side: int) -> Response:
        """The photo a known image id names, at most ``side`` pixels long."""
        with connect(self.config.url) as conn:
            path = queries.known_path(conn, request.path_params["image"])
        if path is None:
            return PlainTextResponse("no such photo in the store", 404)
        try:
            data, _ = images.photo(path, side)
        except (OSError, ImageLoadError):
            return PlainTextResponse("the photo cannot be read", 410)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # -- actions: each one personops call in one transaction, logged with what it changed (for undo) ---------

    async def rename(self, request: Request) -> Response:
        person_id = request.path_params["person"]
        form = await request.form()
        name = " ".join(str(form.get("name", "")).split())
        with connect(self.config.url) as conn:
            try:
                recorded(conn, f"named person {person_id} {name!r}", (), (person_id,),
                         lambda: personops.name_person(conn, person_id, name))  # fmt: skip
            except PersonError as exc:
                taken = conn.execute("SELECT person_id FROM person_names WHERE lower(name) = lower(%s)", (name,))
                other = taken.fetchone()
                return self._page(
                    request, "name_taken.html", person=person_id, message=str(exc),
                    other=None if other is None else int(other[0]),
                )  # fmt: skip
            person = queries.person(conn, person_id)
        return self._page(request, "name.html", person=person)

    async def hide(self, request: Request) -> Response:
        person_id = request.path_params["person"]
        form = await request.form()
        hidden = form.get("hidden", "1") == "1"
        with connect(self.config.url) as conn:
            recorded(conn, f"{'hid' if hidden else 'unhid'} person {person_id}", (), (person_id,),
                     lambda: personops.hide_person(conn, person_id, hidden))  # fmt: skip
        return Response(headers={"HX-Redirect": f"/person/{person_id}"})

    async def merge(self, request: Request) -> Response:
        person_id = request.path_params["person"]
        form = await request.form()
        other = _int(form.get("other"))
        with connect(self.config.url) as conn:
            named = {pid for pid, _ in queries.person_names(conn)}
            keep, gone = (other, person_id) if other in named and person_id not in named else (person_id, other)
            recorded(conn, f"merged person {gone} into person {keep}", (), (keep, gone),
                     lambda: personops.merge_persons(conn, keep, [gone]))  # fmt: skip
        return Response(headers={"HX-Redirect": f"/person/{keep}"})

    async def faces_action(self, request: Request) -> Response:
        """``not`` (not this person), ``move`` (to ``target``) or ``new`` (a new person) for the chosen faces."""
        person_id = request.path_params["person"]
        form = await request.form()
        faces = sorted({_int(value) for value in form.getlist("face")})
        if not faces:
            raise PersonError("choose one or more faces first")
        action = form.get("action")
        with connect(self.config.url) as conn:
            if action == "not":
                recorded(conn, f"{_count(faces)}: not person {person_id}", faces, (person_id,),
                         lambda: personops.not_person_many(conn, faces, person_id))  # fmt: skip
            elif action in ("move", "new"):
                target = personops.resolve_person(conn, str(form.get("target", ""))) if action == "move" else None
                where = f"person {target}" if target is not None else "a new person"
                recorded(conn, f"moved {_count(faces)} from person {person_id} to {where}", faces,
                         [person_id] + ([target] if target is not None else []),
                         lambda: personops.move_faces(conn, faces, person_id, target))  # fmt: skip
            else:
                raise PersonError("unknown action")
        return Response(headers={"HX-Refresh": "true"})

    async def cover(self, request: Request) -> Response:
        person, face = request.path_params["person"], _int((await request.form()).get("face"))
        with connect(self.config.url) as conn:
            recorded(conn, f"person {person} shown by face {face}", (), (person,),
                     lambda: personops.set_cover(conn, person, face))  # fmt: skip
        return PlainTextResponse("cover set")

    async def accept(self, request: Request) -> Response:
        face, person = request.path_params["face"], _int((await request.form()).get("person"))
        with connect(self.config.url) as conn:
            recorded(conn, f"face {face} is person {person}", (face,), (person,),
                     lambda: personops.assign_face(conn, face, person))  # fmt: skip
        return HTMLResponse("")  # the face's card goes: the page keeps its place

    async def reject(self, request: Request) -> Response:
        face, person = request.path_params["face"], _int((await request.form()).get("person"))
        with connect(self.config.url) as conn:
            recorded(conn, f"face {face} is not person {person}", (face,), (person,),
                     lambda: personops.not_person(conn, face, person))  # fmt: skip
        return HTMLResponse("")

    async def group(self, request: Request) -> Response:
        """A group of unassigned faces as a new person, or all of them into an existing ``person``."""
        form = await request.form()
        faces = sorted({_int(value) for value in form.getlist("face")})
        if len(faces) < 2:
            raise PersonError("a group is two faces or more")
        with connect(self.config.url) as conn:
            if form.get("person"):
                person = _int(form.get("person"))
                recorded(conn, f"{_count(faces)} are person {person}", faces, (person,),
                         lambda: [personops.assign_face(conn, face, person) for face in faces])  # fmt: skip
            else:
                recorded(conn, f"a new person of {_count(faces)}", faces, (),
                         lambda: personops.new_person(conn, faces))  # fmt: skip
        return Response(headers={"HX-Refresh": "true"})

    async def dismiss(self, request: Request) -> Response:
        faces = sorted({_int(value) for value in (await request.form()).getlist("face")})
        if not faces:
            raise PersonError("no face to dismiss")
        with connect(self.config.url) as conn:
            recorded(conn, f"dismissed {_count(faces)} too blurred or small to tell", faces, (),
                     lambda: personops.dismiss_faces(conn, faces))  # fmt: skip
        return Response(headers={"HX-Refresh": "true"})

    async def activity(self, request: Request) -> Response:
        with connect(self.config.url) as conn:
            actions = recent(conn)
        return self._page(request, "activity.html", actions=actions)

    async def undo(self, request: Request) -> Response:
        with connect(self.config.url) as conn:
            action = undo_last(conn)
        return PlainTextResponse(f"undone: {action.summary}", headers={"HX-Refresh": "true"})
