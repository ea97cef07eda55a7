"""A small Immich REST client: the calls the staging stage needs, with retries and a circuit breaker.

Calls (Immich server v3, header ``x-api-key``): ``GET /users/me``, ``POST /search/metadata`` (paged),
``GET /faces?id=``, ``GET /assets/{id}/original`` (streamed), ``GET /server/ping``.

Failures are of three kinds:

- fatal for the run: the key is rejected (401/403 -> :class:`ImmichAuthError`), the URL is not an Immich API;
- transient (timeouts, connection errors and resets, truncated bodies, 5xx, 429): retried with exponential
  backoff; still failing, the call raises :class:`TransientError` and the caller leaves the item for the next run;
- the circuit breaker: after ``breaker_limit`` failed attempts in a row (any thread), ``/server/ping`` is probed;
  if it fails too, every call raises :class:`ImmichUnavailableError` (exit code 2) so the run saves its state.

The API key lives in a :class:`Secret` whose ``repr`` and ``str`` are masked; it only ever goes into the
request header, never into an exception, a log line or a file.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import blake3
import httpx

from ...base.errors import ImmichAuthError, ImmichError, ImmichUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_PAGE_SIZE = 1000
BREAKER_LIMIT = 12


class Secret:
    """A string that never prints: ``repr``/``str`` give ``'***'``; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class AssetType(StrEnum):
    IMAGE = "IMAGE"
    VIDEO = "VIDEO"
    AUDIO = "AUDIO"
    OTHER = "OTHER"


@dataclass(frozen=True)
class ImmichUser:
    id: str
    email: str
    name: str


@dataclass(frozen=True)
class Asset:
    """The fields of an ``AssetResponseDto`` that staging uses. ``original_path`` is untrusted."""

    id: str
    type: AssetType
    checksum: str  # base64 SHA-1 of the original
    original_path: str
    file_name: str
    is_trashed: bool
    is_offline: bool
    width: int | None  # of the original; None when Immich does not know it
    height: int | None
    owner_id: str = ""

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Asset:
        kind = str(item.get("type", "OTHER"))
        return cls(
            id=str(item["id"]),
            type=AssetType(kind) if kind in AssetType.__members__ else AssetType.OTHER,
            checksum=str(item.get("checksum") or ""),
            original_path=str(item.get("originalPath") or ""),
            file_name=str(item.get("originalFileName") or ""),
            is_trashed=bool(item.get("isTrashed")),
            is_offline=bool(item.get("isOffline")),
            width=_positive(item.get("width")),
            height=_positive(item.get("height")),
            owner_id=str(item.get("ownerId") or ""),
        )


def _positive(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and value > 0 else None


@dataclass(frozen=True)
class FaceBox:
    """A face box in the pixel space of ``image_width`` x ``image_height`` (Immich's preview, not the original)."""

    x1: int
    y1: int
    x2: int
    y2: int
    image_width: int
    image_height: int

    def short_side(self, width: int | None, height: int | None) -> float:
        """The box's short side in pixels of an original of ``width`` x ``height`` (rotation-safe).

        The preview keeps the original's aspect ratio, so the scale is the ratio of the long sides. Without
        the original's size the preview's is used, which never overestimates (previews are not upscaled)."""
        side = float(min(self.x2 - self.x1, self.y2 - self.y1))
        preview_long = max(self.image_width, self.image_height)
        if not width or not height or preview_long <= 0:
            return side
        return side * max(width, height) / preview_long

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> FaceBox:
        return cls(
            int(item["boundingBoxX1"]),
            int(item["boundingBoxY1"]),
            int(item["boundingBoxX2"]),
            int(item["boundingBoxY2"]),
            int(item["imageWidth"]),
            int(item["imageHeight"]),
        )


@dataclass(frozen=True)
class Download:
    size: int
    sha1: str  # base64, as Immich's checksum
    blake3: str  # hex: the project's content id


class TransientError(Exception):
    """A call still failing after its retries; the item is left for the next run."""


class NotFoundError(Exception):
    """The server answered 404/400 for one item (deleted or unknown since it was listed)."""


@dataclass(frozen=True)
class ClientOptions:
    timeout: float = 60.0  # seconds to connect, and between two chunks of an answer
    retries: int = 4  # extra attempts after a transient failure
    backoff: float = 0.5  # seconds before the first retry, doubled each time (with jitter)
    breaker_limit: int = BREAKER_LIMIT
    connections: int = 8


def api_base(url: str) -> str:
    """The API root for a server URL: ``http://host:2283`` and ``http://host:2283/api`` both give ``.../api``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ImmichError(f"IMMICH_URL {url!r} is not an http(s) URL; set it like http://immich.local:2283")
    return url if url.endswith("/api") else url + "/api"


class _RetryableError(Exception):
    """An answer worth another attempt (5xx, 429, unreadable JSON)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CircuitBreaker:
    """Counts failed attempts in a row across threads; at the limit, probes the server once."""

    def __init__(self, limit: int, probe: Callable[[], str | None]) -> None:
        self.limit = limit
        self._probe = probe
        self._lock = threading.Lock()
        self._failures = 0
        self.open_reason: str | None = None

    def check(self) -> None:
        if self.open_reason is not None:
            raise ImmichUnavailableError(self.open_reason)

    def success(self) -> None:
        with self._lock:
            self._failures = 0

    def failure(self, reason: str) -> None:
        with self._lock:
            if self.open_reason is not None:
                raise ImmichUnavailableError(self.open_reason)
            self._failures += 1
            if self._failures < self.limit:
                return
            problem = self._probe()
            if problem is None:
                self._failures = 0
                return
            self.open_reason = (
                f"{self._failures} requests in a row failed (last: {reason}) and /server/ping failed ({problem})"
            )
        raise ImmichUnavailableError(self.open_reason)


class ImmichClient:
    """Thread-safe: one connection pool shared by the workers."""

    def __init__(self, url: str, key: Secret, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self.base = api_base(url)
        limits = httpx.Limits(
            max_connections=self.options.connections + 2, max_keepalive_connections=self.options.connections + 2
        )
        self._http = httpx.Client(
            base_url=self.base,
            headers={"x-api-key": key.reveal(), "accept": "application/json"},
            timeout=httpx.Timeout(self.options.timeout),
            limits=limits,
            follow_redirects=False,
        )
        self.breaker = CircuitBreaker(self.options.breaker_limit, self._ping_problem)
        self._total = 0  # the library's assets by /assets/statistics, once asked

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImmichClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------------------

    def me(self) -> ImmichUser:
        """The owner of the key. Wrong URLs and refused keys stop here, with a message that says which."""
        try:
            data = self._call(partial(self._json_call, "GET", "/users/me"))
        except TransientError as exc:
            raise ImmichError(
                f"cannot reach Immich at {self.base} ({exc}): check IMMICH_URL and that the server is up"
            ) from None
        except NotFoundError:
            data = None
        if not isinstance(data, dict) or "id" not in data:
            raise ImmichError(
                f"{self.base}/users/me did not answer a user: IMMICH_URL does not point at an Immich server "
                "(it should be like http://host:2283)"
            )
        return ImmichUser(str(data["id"]), str(data.get("email", "")), str(data.get("name", "")))

    def pages(self, first_page: int, page_size: int = MAX_PAGE_SIZE) -> Iterator[tuple[int, list[Asset]]]:
        """``(page number, assets)`` from ``first_page`` on, following ``nextPage`` (``total`` is not trusted).

        A listing that does not end is stopped: a page seen before (the same assets again), or more pages than
        the library's size (``/assets/statistics``, with room for assets added meanwhile) can hold."""
        last = self._last_page(first_page, page_size)
        seen: set[str] = set()
        page: int | None = first_page
        while page is not None:
            body = _page_body(page, page_size)
            try:
                data = self._call(partial(self._json_call, "POST", "/search/metadata", json=body))
            except TransientError as exc:
                raise ImmichUnavailableError(
                    f"{self.base}/search/metadata kept failing on page {page} ({exc})"
                ) from None
            try:
                block = data["assets"]
                items = [Asset.from_api(item) for item in block["items"]]
                following = block.get("nextPage")
            except (KeyError, TypeError, ValueError) as exc:
                raise ImmichError(f"{self.base}/search/metadata answered a malformed page {page} ({exc!r})") from None
            signature = blake3.blake3("\n".join(asset.id for asset in items).encode()).hexdigest()
            if items and signature in seen:
                raise ImmichError(
                    f"{self.base}/search/metadata gave page {page} again (the same assets): refusing to loop"
                )
            seen.add(signature)
            yield page, items
            page = _next_page(following, page, self.base)
            if page is not None and last is not None and page > last:
                raise ImmichError(
                    f"{self.base}/search/metadata offers page {page}, more than the library's "
                    f"{self._total} assets fill: refusing to list without end (what was listed is saved)"
                )

    def _last_page(self, first_page: int, page_size: int) -> int | None:
        """The last page a listing may reach: the library's size by ``/assets/statistics``, plus a tenth and two
        pages for assets added while it runs; None when the server does not say."""
        try:
            data = self._call(partial(self._json_call, "GET", "/assets/statistics"))
            self._total = int(data["total"])
        except (TransientError, NotFoundError, ImmichError, KeyError, TypeError, ValueError):
            return None
        return first_page + math.ceil(self._total * 1.1 / page_size) + 2

    def faces(self, asset_id: str) -> list[FaceBox]:
        data = self._call(lambda: self._json_call("GET", "/faces", params={"id": asset_id}))
        try:
            return [FaceBox.from_api(item) for item in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise TransientError(f"malformed faces answer ({exc!r})") from None

    def download(self, asset_id: str, target: Path) -> Download:
        """Stream the original into ``target`` (truncated first), hashing as it goes; retried as a whole."""
        return self._call(lambda: self._download_once(asset_id, target))

    def ping(self) -> bool:
        return self._ping_problem() is None

    # -- plumbing ----------------------------------------------------------------------------------------

    def _call(self, attempt: Callable[[], T]) -> T:
        reason = "no attempt"
        for number in range(self.options.retries + 1):
            self.breaker.check()
            try:
                result = attempt()
            except _RetryableError as exc:
                reason = exc.reason
            except httpx.TransportError as exc:
                reason = _describe(exc)
            else:
                self.breaker.success()
                return result
            self.breaker.failure(reason)
            if number < self.options.retries:
                delay = self.options.backoff * (2**number) * random.uniform(0.5, 1.5)
                log.debug("retrying in %.2fs after: %s", delay, reason)
                time.sleep(delay)
        raise TransientError(reason)

    def _json_call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _check_status(response)
        return _json(response, self.base + path)

    def _download_once(self, asset_id: str, target: Path) -> Download:
        with self._http.stream("GET", f"/assets/{asset_id}/original") as response:
            _check_status(response)
            with open(target, "wb") as handle:
                return hashed_copy(response.iter_bytes(1 << 20), handle)

    def _ping_problem(self) -> str | None:
        try:
            response = self._http.get("/server/ping", timeout=min(self.options.timeout, 10.0))
        except httpx.TransportError as exc:
            return _describe(exc)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        try:
            answer = response.json()
        except ValueError:
            return "not JSON"
        return None if isinstance(answer, dict) and answer.get("res") == "pong" else "unexpected answer"


def hashed_copy(chunks: Iterator[bytes], handle: BinaryIO | None) -> Download:
    """Size, SHA-1 (base64) and BLAKE3 of the chunks, written to ``handle`` on the way when given."""
    sha1, content = hashlib.sha1(usedforsecurity=False), blake3.blake3()
    size = 0
    for chunk in chunks:
        if handle is not None:
            handle.write(chunk)
        sha1.update(chunk)
        content.update(chunk)
        size += len(chunk)
    return Download(size, base64.b64encode(sha1.digest()).decode("ascii"), content.hexdigest())


def _page_body(page: int, page_size: int) -> dict[str, Any]:
    return {"page": page, "size": min(page_size, MAX_PAGE_SIZE), "withExif": False}


def _check_status(response: httpx.Response) -> None:
    _raise_for_auth(response)
    status = response.status_code
    if status == 429 or status >= 500:
        raise _RetryableError(f"HTTP {status}")
    if status in (400, 404):
        raise NotFoundError(f"HTTP {status}")
    if status != 200:
        raise _RetryableError(f"unexpected HTTP {status}")


def _raise_for_auth(response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        raise ImmichAuthError(
            f"Immich rejected the API key (HTTP {response.status_code} for {response.request.url.path}): "
            "it is wrong, revoked or lacks a permission (asset.read, asset.download, face.read, user.read). "
            "Create a key for this user in Immich (Account Settings > API Keys) and set it as the docs describe"
        )


def _json(response: httpx.Response, where: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _RetryableError(f"unreadable JSON from {where}") from None


def _next_page(value: Any, page: int, base: str) -> int | None:
    if value is None:
        return None
    try:
        following = int(value)
    except (TypeError, ValueError):
        raise ImmichError(f"{base}/search/metadata gave nextPage {value!r}, not a page number") from None
    if following <= page:
        raise ImmichError(f"{base}/search/metadata gave nextPage {following} after page {page}: refusing to loop")
    return following


def _describe(exc: httpx.TransportError) -> str:
    """A short reason without the request's headers (the key never appears)."""
    kind = type(exc).__name__
    detail = str(exc).split("\n")[0][:160]
    return f"{kind}: {detail}" if detail else kind
