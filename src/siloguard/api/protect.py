"""Protection in front of every route: body size limit, rate limits, an access log without PII.

A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which buffers and costs a
task per request):

* more than ``api.max_headers`` header lines, or names and values totalling more than
  ``api.max_header_bytes`` bytes, are refused with 431 (``siloguard serve`` refuses them
  earlier, while parsing: :mod:`siloguard.api.server`; this check holds under any ASGI server);
* a body larger than ``api.max_body_bytes`` is refused with 413, by ``Content-Length`` before
  reading and by counting the bytes of a streamed body;
* requests are counted per client address and per credential (a hash of the
  ``Authorization`` header) with the ``limits`` package's sliding-window counters, in the
  storage ``api.rate_storage`` names: in process memory (``memory://``, one server process) or
  in Redis (``redis://...``), shared by every worker process and server, so N workers do not
  give N times the limit; over the limit is 429 with ``Retry-After``. If the shared storage
  cannot be reached the request is refused (503 ``rate_limiter_unavailable``): no limit is
  not a reason to let everything through;
* the access log line has the method, the route template (``/v1/requests/{request_id}``, not
  the path), the status and the time: no address, no query string, no header. uvicorn's own
  access log is off (``siloguard serve`` starts it with ``access_log=False``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from typing import Any

from limits import parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string

from siloguard.config import ApiSettings

__all__ = ["Protect", "error_body", "headers_too_large_message", "rate_storage", "storage_reachable"]

access_log = logging.getLogger("siloguard.api.access")

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


def error_body(status: int, code: str, message: str) -> bytes:
    """The API's error body (see :mod:`siloguard.api.errors`) as bytes."""
    return json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()


def headers_too_large_message(max_headers: int, max_header_bytes: int) -> str:
    return (f"the request headers are too large: at most {max_headers} headers, "
            f"{max_header_bytes} bytes of names and values in total")


def _error(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[dict, dict]:
    body = error_body(status, code, message)
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])],
    }
    return start, {"type": "http.response.body", "body": body}


def _check_uri(uri: str) -> None:
    from siloguard.errors import ConfigError

    if uri != "memory://" and not uri.startswith(("redis://", "rediss://", "redis+unix://")):
        raise ConfigError(f"api.rate_storage {uri.split(':', 1)[0]!r}: use memory:// or redis://HOST:6379/0")


def rate_storage(uri: str, *, key_prefix: str = "siloguard") -> Storage:
    """The ``limits`` storage for ``api.rate_storage``, in its asyncio form: the middleware runs
    on the event loop, and a blocking Redis round trip there would hold up every connection of
    the worker. A URI it does not take is a ConfigError.

    Shared storages wrap their errors (``limits.errors.StorageError``), so a Redis that went
    away is one kind of error to refuse on. Nothing is connected here (:func:`storage_reachable`).
    """
    from siloguard.errors import ConfigError

    _check_uri(uri)
    if uri == "memory://":
        return MemoryStorage()
    try:
        return storage_from_string("async+" + uri, wrap_exceptions=True, key_prefix=f"{key_prefix}:rate",
                                   implementation="redispy")
    except ConfigurationError as exc:  # e.g. the redis client is not installed
        raise ConfigError(f"api.rate_storage: {exc}") from None


def storage_reachable(uri: str) -> bool:
    """Whether the storage answers now (a blocking ping, for start-up checks outside the event loop)."""
    _check_uri(uri)
    if uri == "memory://":
        return True
    return bool(storage_from_string(uri, wrap_exceptions=True).check())


class Protect:
    def __init__(
        self, app: Any, *, max_body_bytes: int, rate_per_key: str, rate_per_ip: str,
        max_headers: int = ApiSettings.model_fields["max_headers"].default,
        max_header_bytes: int = ApiSettings.model_fields["max_header_bytes"].default,
        max_answer_bytes: int = ApiSettings.model_fields["max_answer_bytes"].default,
        storage: Storage | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_answer = max_answer_bytes
        self.max_headers, self.max_header_bytes = max_headers, max_header_bytes
        self.storage = storage or MemoryStorage()
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.per_key = parse(rate_per_key)
        self.per_ip = parse(rate_per_ip)

    def _limit(self, scope: Scope) -> int:
        """A store's answer to an access task may be large (``api.max_answer_bytes``); every other body is small."""
        path = str(scope.get("path", ""))
        if scope.get("method") == "POST" and path.startswith("/v1/stores/") and path.endswith("/done"):
            # Only for a caller presenting an API key (a store's): nobody else gets the service
            # to read megabytes before it is refused (the route then checks the key's role).
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            if auth.startswith(b"Bearer sgk_"):
                return self.max_answer
        return self.max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 0, "refused": False}
        headers = dict(scope.get("headers") or [])

        async def send_logged(message: dict) -> None:
            if state["refused"]:
                return  # the 413 went out already; whatever the app answers is dropped
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        refusal = await self._refuse(scope, headers)
        if refusal is not None:
            start, body = refusal
            await send_logged(start)
            await send(body)
            self._log(scope, state["status"], started)
            return

        seen = 0
        limit = self._limit(scope)

        async def receive_limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not state["refused"]:
                    # A streamed body (no Content-Length) over the limit: answer 413 now and
                    # stop the app (which would otherwise report a body parsing error).
                    start, body = _error(413, "too_large", f"the request body is larger than {limit} bytes")
                    if state["status"] == 0:
                        await send_logged(start)
                        await send(body)
                    state["refused"] = True
                    raise _TooLarge
            return message

        try:
            await self.app(scope, receive_limited, send_logged)
        except _TooLarge:
            pass
        self._log(scope, state["status"], started)

    async def _refuse(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[dict, dict] | None:
        raw = scope.get("headers") or []
        if len(raw) > self.max_headers or sum(len(name) + len(value) for name, value in raw) > self.max_header_bytes:
            return _error(431, "headers_too_large", headers_too_large_message(self.max_headers, self.max_header_bytes))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self._limit(scope)
            except ValueError:
                return _error(400, "bad_request", "Content-Length is not a number")
            if too_big:
                return _error(413, "too_large", f"the request body is larger than {self._limit(scope)} bytes")
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        try:
            if not await self.limiter.hit(self.per_ip, "ip", ip):
                return await self._limited(self.per_ip, "ip", ip, "this address")
            auth = headers.get(b"authorization")
            if auth:
                key = hashlib.sha256(auth).hexdigest()[:32]
                if not await self.limiter.hit(self.per_key, "key", key):
                    return await self._limited(self.per_key, "key", key, "this credential")
        except StorageError:
            # Fail closed: a request that cannot be counted is not served.
            access_log.warning("rate-limit storage unreachable; refusing the request")
            return _error(503, "rate_limiter_unavailable", "the service cannot count requests right now; retry in a moment",
                          [(b"retry-after", b"1")])
        return None

    async def _limited(self, limit: Any, *ids: str) -> tuple[dict, dict]:
        *keys, who = ids
        reset = (await self.limiter.get_window_stats(limit, *keys)).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        return _error(
            429, "rate_limited", f"too many requests from {who}; retry after {retry} s",
            [(b"retry-after", str(retry).encode())],
        )

    @staticmethod
    def _log(scope: Scope, status: int, started: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        route = scope.get("route")
        template = getattr(route, "path", None) or "(unmatched)"
        access_log.info("%s %s %d %.1fms", scope.get("method", "-"), template, status, (time.perf_counter() - started) * 1000)
