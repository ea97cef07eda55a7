"""A fake Immich server for tests and the staging benchmark: a real HTTP server on 127.0.0.1.

It serves the calls the stage makes (``/api/users/me``, ``/api/search/metadata``, ``/api/faces``,
``/api/assets/{id}/original``, ``/api/server/ping``) from an in-memory library, following Immich v3.1's
OpenAPI spec (``../shared/immich``): with a :class:`SpecChecker`, every request and every 200 answer is
validated against the spec and each violation is recorded in ``server.violations``.

Faults (:class:`Faults`, changeable while it runs): latency, 5xx bursts, connection resets, truncated bodies,
corrupted downloads, an outage (everything 503, ping included) that may start after N requests, and key
revocation (401). Like some Immich versions, the listing includes trashed and offline assets.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

STAMP = "2024-05-01T12:00:00.000Z"


def fake_uuid(number: int, salt: int = 0) -> str:
    """A deterministic version-4 UUID (Immich's id pattern wants version 4 and the RFC variant)."""
    digest = hashlib.blake2b(f"{salt}:{number}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


@dataclass
class FakeAsset:
    id: str
    original_path: str
    data: bytes
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)  # boxes in preview pixels
    preview: tuple[int, int] = (0, 0)  # the preview's width, height (the faces' pixel space)
    size: tuple[int | None, int | None] = (None, None)  # the original's width, height
    type: str = "IMAGE"
    is_trashed: bool = False
    is_offline: bool = False
    checksum: str | None = None  # None: the SHA-1 of data (the truth)

    def real_checksum(self) -> str:
        return base64.b64encode(hashlib.sha1(self.data, usedforsecurity=False).digest()).decode("ascii")

    def to_api(self, owner_id: str) -> dict[str, Any]:
        name = self.original_path.replace("\\", "/").rsplit("/", 1)[-1]
        return {
            "id": self.id,
            "type": self.type,
            "checksum": self.real_checksum() if self.checksum is None else self.checksum,
            "originalPath": self.original_path,
            "originalFileName": name,
            "originalMimeType": "video/mp4" if self.type == "VIDEO" else "image/jpeg",
            "ownerId": owner_id,
            "createdAt": STAMP,
            "updatedAt": STAMP,
            "fileCreatedAt": STAMP,
            "fileModifiedAt": STAMP,
            "localDateTime": STAMP,
            "duration": 1000 if self.type == "VIDEO" else None,
            "hasMetadata": True,
            "width": self.size[0],
            "height": self.size[1],
            "isArchived": False,
            "isEdited": False,
            "isFavorite": False,
            "isOffline": self.is_offline,
            "isTrashed": self.is_trashed,
            "thumbhash": None,
            "visibility": "timeline",
        }

    def faces_api(self) -> list[dict[str, Any]]:
        return [
            {
                "id": fake_uuid(index + 1, salt=int(self.id.replace("-", "")[:12], 16)),
                "boundingBoxX1": x1,
                "boundingBoxY1": y1,
                "boundingBoxX2": x2,
                "boundingBoxY2": y2,
                "imageWidth": self.preview[0],
                "imageHeight": self.preview[1],
                "person": None,
                "sourceType": "machine-learning",
            }
            for index, (x1, y1, x2, y2) in enumerate(self.faces)
        ]


@dataclass
class FakeUser:
    id: str
    name: str
    key: str

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": f"{self.name}@example.com",
            "avatarColor": "primary",
            "createdAt": STAMP,
            "updatedAt": STAMP,
            "profileChangedAt": STAMP,
            "deletedAt": None,
            "isAdmin": False,
            "license": None,
            "oauthId": "",
            "profileImagePath": "",
            "quotaSizeInBytes": None,
            "quotaUsageInBytes": None,
            "shouldChangePassword": False,
            "status": "active",
            "storageLabel": None,
        }


@dataclass
class Faults:
    latency: float = 0.0  # seconds added to every request
    after: int = 0  # fail_next and reset_next start once this many requests have been served
    fail_next: int = 0  # the next N requests answer 503
    reset_next: int = 0  # the next N requests get their connection reset, no answer
    truncate_next: int = 0  # the next N downloads send half the body, then close
    corrupt: dict[str, int] = field(default_factory=dict)  # asset id -> downloads to corrupt
    down: bool = False  # an outage: everything answers 503, ping included
    down_after: int | None = None  # go down once this many requests have been served
    revoked: set[str] = field(default_factory=set)  # keys that now get 401
    endless: str = ""  # "repeat": every page is the first again, "fresh": new assets forever; nextPage never ends


class SpecChecker:
    """Validates requests and 200 answers against Immich's OpenAPI document."""

    def __init__(self, spec_path: Path) -> None:
        from openapi_schema_validator import OAS30Validator

        self.spec = _nullable_refs(orjson.loads(spec_path.read_bytes()))
        self._validator = OAS30Validator
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    def operation(self, method: str, template: str) -> dict[str, Any]:
        return dict(self.spec["paths"][template][method.lower()])

    def check(self, schema: dict[str, Any], value: Any, where: str) -> list[str]:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
        with self._lock:
            validator = self._cache.get(key)
            if validator is None:
                document = {**schema, "components": self.spec["components"]}
                validator = self._validator(document, format_checker=self._validator.FORMAT_CHECKER)
                self._cache[key] = validator
        return [f"{where}: {error.message}" for error in validator.iter_errors(value)]

    def request(self, method: str, template: str, headers: Any, query: dict[str, str], body: Any) -> list[str]:
        operation = self.operation(method, template)
        where = f"{method} {template}"
        problems = []
        if not headers.get("x-api-key") and operation.get("security"):
            problems.append(f"{where}: no x-api-key header")
        known = {param["name"]: param for param in operation.get("parameters", []) if param["in"] == "query"}
        for name, value in query.items():
            if name not in known:
                problems.append(f"{where}: query parameter {name!r} is not in the spec")
                continue
            problems += self.check(known[name]["schema"], _typed(value, known[name]["schema"]), f"{where} ?{name}")
        for name, param in known.items():
            if param.get("required") and name not in query:
                problems.append(f"{where}: required query parameter {name!r} missing")
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if content is not None:
            problems += self.check(content["schema"], body, f"{where} body")
        elif body is not None:
            problems.append(f"{where}: a body the spec does not take")
        return problems

    def response(self, method: str, template: str, body: Any) -> list[str]:
        answers = self.operation(method, template)["responses"]["200"].get("content", {})
        content = answers.get("application/json")
        if content is None:
            return []
        return self.check(content["schema"], body, f"{method} {template} -> 200")


def _nullable_refs(node: Any) -> Any:
    """``{"allOf": [X], "nullable": true}`` as ``{"anyOf": [X, {"enum": [null]}]}``: the OAS 3.0 idiom for a
    nullable reference, which JSON-schema validators otherwise read as "X, never null" (Immich returns null)."""
    if isinstance(node, list):
        return [_nullable_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_refs(value) for key, value in node.items()}
    if node.get("nullable") is True and len(node.get("allOf", [])) == 1:
        rest = {key: value for key, value in node.items() if key not in ("allOf", "nullable")}
        return {**rest, "anyOf": [node["allOf"][0], {"enum": [None]}]}
    return node


def _typed(value: str, schema: dict[str, Any]) -> Any:
    if schema.get("type") == "boolean":
        return value == "true"
    if schema.get("type") == "integer":
        return int(value) if value.lstrip("-").isdigit() else value
    return value


class FakeImmich:
    """``with FakeImmich(assets, users) as server: server.url``; see the module docstring."""

    def __init__(
        self, assets: list[FakeAsset], users: list[FakeUser], checker: SpecChecker | None = None, owner: int = 0
    ) -> None:
        self.assets = assets
        self.by_id = {asset.id: asset for asset in assets}
        self.users = {user.key: user for user in users}
        self.owner = users[owner]
        self.checker = checker
        self.faults = Faults()
        self.violations: list[str] = []
        self.log: list[tuple[str, str]] = []  # (method, path) of every request, in arrival order
        self.lock = threading.Lock()
        self._served = 0
        self._server = _QuietServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeImmich:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, asset_id: str) -> list[str]:
        with self.lock:
            return [path for _, path in self.log if asset_id in path]

    # -- fault decisions (under the lock) ----------------------------------------------------------------

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            self.log.append(("", path))
            self._served += 1
            faults = self.faults
            if faults.down_after is not None and self._served > faults.down_after:
                faults.down = True
            if faults.down:
                return "down"
            if path.endswith("/server/ping") or self._served <= faults.after:
                return None
            for name in ("reset_next", "fail_next"):
                if getattr(faults, name) > 0:
                    setattr(faults, name, getattr(faults, name) - 1)
                    return name
            return None

    def download_fault(self, asset_id: str) -> str | None:
        with self.lock:
            if self.faults.truncate_next > 0:
                self.faults.truncate_next -= 1
                return "truncate"
            if self.faults.corrupt.get(asset_id, 0) > 0:
                self.faults.corrupt[asset_id] -= 1
                return "corrupt"
            return None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish mid-answer (killed on purpose) are not errors of the fake."""


def _handler_class(server: FakeImmich) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        fake = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeImmich

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Node's HTTP server does

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self._read_body()
        if fake.faults.latency:
            time.sleep(fake.faults.latency)
        fault = fake.next_fault(parts.path)
        if fault == "reset_next":
            self._reset()
            return
        if fault in ("down", "fail_next"):
            self._json(503, {"message": "Service Unavailable", "statusCode": 503})
            return
        route = _route(method, parts.path)
        if route is None:
            self._json(404, {"message": f"Cannot {method} {parts.path}", "statusCode": 404})
            return
        template, argument = route
        if fake.checker is not None:
            problems = fake.checker.request(method, template, self.headers, query, body)
            if problems:
                with fake.lock:
                    fake.violations.extend(problems)
                self._json(400, {"message": problems, "statusCode": 400})
                return
        if template != "/server/ping":
            user = fake.users.get(self.headers.get("x-api-key", ""))
            if user is None or self.headers.get("x-api-key") in fake.faults.revoked:
                self._json(401, {"message": "Invalid API key", "statusCode": 401})
                return
        self._dispatch(method, template, argument, query, body)

    def _dispatch(self, method: str, template: str, argument: str, query: dict[str, str], body: Any) -> None:
        fake = self.fake
        if template == "/server/ping":
            self._ok(method, template, {"res": "pong"})
        elif template == "/users/me":
            self._ok(method, template, fake.users[self.headers["x-api-key"]].to_api())
        elif template == "/search/metadata":
            self._ok(method, template, _page(fake, body))
        elif template == "/assets/statistics":
            videos = sum(1 for asset in fake.assets if asset.type == "VIDEO")
            images = sum(1 for asset in fake.assets if asset.type == "IMAGE")
            self._ok(method, template, {"images": images, "total": len(fake.assets), "videos": videos})
        elif template == "/faces":
            asset = fake.by_id.get(query.get("id", ""))
            if asset is None:
                self._json(400, {"message": "Not found or no face.read access", "statusCode": 400})
            else:
                self._ok(method, template, asset.faces_api())
        else:
            asset = fake.by_id.get(argument)
            if asset is None:
                self._json(400, {"message": "Not found or no asset.download access", "statusCode": 400})
            else:
                self._original(asset)

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", "replace")

    def _ok(self, method: str, template: str, body: Any) -> None:
        checker = self.fake.checker
        if checker is not None:
            problems = checker.response(method, template, body)
            if problems:
                with self.fake.lock:
                    self.fake.violations.extend(problems)
        self._json(200, body)

    def _json(self, status: int, body: Any) -> None:
        data = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _original(self, asset: FakeAsset) -> None:
        fault = self.fake.download_fault(asset.id)
        data = asset.data
        if fault == "corrupt":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._reset()
            return
        self.wfile.write(data)

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the connection was reset on purpose
            super().finish()

    def _reset(self) -> None:
        """Drop the connection with a TCP reset."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def _route(method: str, path: str) -> tuple[str, str] | None:
    if not path.startswith("/api/"):
        return None
    rest = path[4:]
    fixed = {
        ("GET", "/server/ping"),
        ("GET", "/users/me"),
        ("POST", "/search/metadata"),
        ("GET", "/faces"),
        ("GET", "/assets/statistics"),
    }
    if (method, rest) in fixed:
        return rest, ""
    pieces = rest.split("/")
    if method == "GET" and len(pieces) == 4 and pieces[1] == "assets" and pieces[3] == "original":
        return "/assets/{id}/original", pieces[2]
    return None


def _page(fake: FakeImmich, body: Any) -> dict[str, Any]:
    page, size = int(body.get("page", 1)), int(body.get("size", 250))
    items = fake.assets[(page - 1) * size : page * size]
    more = page * size < len(fake.assets)
    if fake.faults.endless == "repeat":
        items, more = fake.assets[:size], True
    elif fake.faults.endless == "fresh":
        template = fake.assets[0]
        items = [dataclasses.replace(template, id=fake_uuid(page * size + i, salt=7)) for i in range(size)]
        more = True
    return {
        "albums": {"count": 0, "facets": [], "items": [], "total": 0},
        "assets": {
            "count": len(items),
            "facets": [],
            "items": [asset.to_api(fake.owner.id) for asset in items],
            "nextPage": str(page + 1) if more else None,
            "total": len(items),
        },
    }
