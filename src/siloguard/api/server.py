"""How ``siloguard serve`` runs uvicorn: its options, in one place, and HTTP protocols whose own
errors have the API's JSON shape.

:func:`uvicorn_options` is the only place the uvicorn keyword arguments are built: ``serve``
passes them to ``uvicorn.run`` and the tests to ``uvicorn.Config``, so the tests run what users run.

* **Proxy headers** (``X-Forwarded-For``, ``X-Forwarded-Proto``) are believed only from the
  addresses in ``api.trusted_proxies``; empty (the default) turns uvicorn's proxy-header
  middleware off. uvicorn's own default believes them from 127.0.0.1, so anything on the host
  (or a proxy that does not overwrite the header) could pick its client address and step
  around the per-address rate limit.
* **Errors before the app.** uvicorn answers a request it cannot parse itself, with a
  ``text/plain`` 400, before any middleware runs. The protocols here answer in the API's shape
  (``{"error": {"status", "code", "message"}}``, as :mod:`siloguard.api.errors`).
* **Header limits.** At most ``api.max_headers`` header lines whose names and values total at
  most ``api.max_header_bytes`` bytes; more is 431 ``headers_too_large``, checked as the
  headers are parsed, before the request reaches the app. The head is also refused once the
  bytes received for it pass :func:`head_limit` while it is still incomplete, so one endless
  header cannot fill memory (httptools has no limit of its own; h11 has one, which is set to
  the same number). :class:`siloguard.api.protect.Protect` checks the same limits on what
  reaches the app, for any ASGI server.
* **Workers.** ``siloguard serve --workers N`` (``api.workers``) runs N server processes on one
  listening socket (uvicorn's supervisor, which restarts a worker that dies). Each worker is a
  new Python process: it builds its app with :func:`worker_app` from the settings ``serve``
  resolved (passed as JSON in :data:`SETTINGS_ENV`, so ``--db``, ``--run`` and the environment
  mean the same in every worker), and the protocol classes travel by name (module
  ``__getattr__`` below). Rate limits must then be counted in a shared storage
  (``api.rate_storage=redis://...``): with ``memory://`` every worker would count alone and N
  workers would allow N times every limit, so ``serve`` refuses that combination.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
from http import HTTPStatus
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from siloguard.api.protect import error_body, headers_too_large_message
from siloguard.config import Settings
from siloguard.errors import ConfigError

__all__ = ["SETTINGS_ENV", "head_limit", "protocol_class", "quiet_logs", "uvicorn_options", "worker_app"]

#: The environment variable through which ``serve`` hands its resolved settings to its workers.
SETTINGS_ENV = "SILOGUARD_SERVE_SETTINGS"

#: Room for the request line (method, target, version) in the head limit.
REQUEST_LINE_BYTES = 8192
#: How long a refused connection is still read (and the bytes dropped) after the error was
#: written, so that the client reads the error instead of a connection reset: closing a socket
#: with unread input makes the kernel send a reset, which can discard the answer on its way
#: (RFC 9112, section 9.6, "tear-down": close the sending side first).
LINGER_SECONDS = 2.0

_BAD_REQUEST = "the request is not valid HTTP/1.1; check the request line and the headers"


def head_limit(max_headers: int, max_header_bytes: int) -> int:
    """The most bytes of one request head (request line, header lines with their ``": "`` and
    line ends) buffered before it is refused with 431."""
    return max_header_bytes + 4 * max_headers + REQUEST_LINE_BYTES


def _trusted_proxies(entries: list[str]) -> list[str]:
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry)  # an address is a network of one; host bits set is an error
        except ValueError:
            raise ConfigError(
                f"api.trusted_proxies: {entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24) or '*'"
            ) from None
    return list(entries)


def uvicorn_options(settings: Settings, *, http: Literal["auto", "httptools", "h11"] = "auto") -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for ``settings``.

    ``http`` picks the parser as uvicorn's ``auto`` does (httptools when installed, else h11);
    the tests run both.
    """
    api = settings.api
    trusted = _trusted_proxies(api.trusted_proxies)
    return {
        "host": api.host,
        "port": api.port,
        "http": protocol_class(api.max_headers, api.max_header_bytes, http=http),
        "h11_max_incomplete_event_size": head_limit(api.max_headers, api.max_header_bytes),
        "proxy_headers": bool(trusted),
        # Passed even when empty: uvicorn would otherwise read FORWARDED_ALLOW_IPS from the
        # environment (default 127.0.0.1); api.trusted_proxies is the one setting for this.
        "forwarded_allow_ips": trusted,
        "access_log": False,  # Protect writes the access log, without addresses
        "log_level": "warning",
    }


# ---- protocols -------------------------------------------------------------------------------
#
# uvicorn has no hook for the errors it answers itself: a request it cannot parse gets a
# text/plain 400 from the protocol's ``send_400_response`` before any ASGI middleware runs, and
# it has no header count limit (nor, with httptools, a size limit). So these are small
# subclasses of its two HTTP/1.1 protocols, given to uvicorn through its ``http=`` option
# (which accepts a class): they override ``send_400_response`` to answer in the API's JSON
# shape and check the headers as the parser hands them over. Everything else is uvicorn's.


class _JsonErrors:
    """What both protocols share: the limits, the JSON answer and a lingering close."""

    max_headers = 100
    max_header_bytes = 8192
    _refused = False
    _status = 400

    transport: asyncio.Transport
    server_state: Any
    loop: asyncio.AbstractEventLoop

    def _headers_over(self, count: int, size: int) -> bool:
        return count > self.max_headers or size > self.max_header_bytes

    def send_400_response(self, msg: str) -> None:  # uvicorn's name; msg is its text/plain one
        if self._status == 431:
            self._answer(431, "headers_too_large", headers_too_large_message(self.max_headers, self.max_header_bytes))
        else:
            self._answer(400, "bad_request", _BAD_REQUEST)

    def _answer(self, status: int, code: str, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        body = error_body(status, code, message)
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [b"content-type: application/json", b"content-length: " + str(len(body)).encode(), b"connection: close"]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete or not self.transport.can_write_eof():
            # An earlier (pipelined) request is still being answered, or TLS: close as uvicorn does.
            self.transport.close()
            return
        # Lingering close: stop sending, read and drop what the client still sends for a moment
        # (data_received ignores it now), then close.
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def shutdown(self) -> None:
        if self._refused:
            self.transport.close()
        else:
            super().shutdown()  # type: ignore[misc]


class _HeadersTooLarge(Exception):
    pass


class JsonH11Protocol(_JsonErrors, H11Protocol):
    """uvicorn's h11 protocol with JSON errors and the header limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size or head_limit(self.max_headers, self.max_header_bytes)
        self.conn = _H11Connection(self, h11.SERVER, limit)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)


class _H11Connection(h11.Connection):
    """h11's connection, remembering the status h11 suggests when it refuses a request (431 for
    a head over its size limit: uvicorn drops the hint) and refusing too many or too large headers."""

    def __init__(self, protocol: JsonH11Protocol, role: Any, max_incomplete_event_size: int) -> None:
        super().__init__(role, max_incomplete_event_size=max_incomplete_event_size)
        self.protocol = protocol

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.protocol._status = 431 if exc.error_status_hint == 431 else 400
            raise
        if isinstance(event, h11.Request):
            size = sum(len(name) + len(value) for name, value in event.headers)
            if self.protocol._headers_over(len(event.headers), size):
                self.protocol._status = 431
                raise h11.RemoteProtocolError("request headers too large", error_status_hint=431)
        return event


try:
    import httptools  # noqa: F401  (an optional dependency of uvicorn)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    JsonHttpToolsProtocol = None
else:

    class JsonHttpToolsProtocol(_JsonErrors, HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol with JSON errors and the header limits."""

        _in_head = True
        _head_bytes = 0
        _count = 0
        _size = 0

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            counting = self._in_head
            if counting:
                self._head_bytes += len(data)
            super().data_received(data)  # the parser's errors end in send_400_response
            if counting and self._in_head and not self._refused and self._head_bytes > head_limit(self.max_headers, self.max_header_bytes):
                # Still no end of the head, and more than a full head's bytes: httptools would
                # keep buffering an unfinished header line for ever.
                self._status = 431
                self.send_400_response("")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._count, self._size = True, 0, 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count += 1
            self._size += len(name) + len(value)
            if self._headers_over(self._count, self._size):
                self._status = 431
                raise _HeadersTooLarge  # httptools stops parsing; uvicorn calls send_400_response
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True


_MADE_NAME = re.compile(r"(JsonH11Protocol|JsonHttpToolsProtocol)_([0-9]+)_([0-9]+)")
_MADE: dict[str, type] = {}


def protocol_class(max_headers: int, max_header_bytes: int, *, http: Literal["auto", "httptools", "h11"] = "auto") -> type:
    """The protocol class for uvicorn's ``http=`` option, with these limits."""
    if http == "httptools" and JsonHttpToolsProtocol is None:
        raise ConfigError("the httptools HTTP parser is not installed (pip install httptools)")
    base = JsonH11Protocol if http == "h11" or JsonHttpToolsProtocol is None else JsonHttpToolsProtocol
    return _made(f"{base.__name__}_{int(max_headers)}_{int(max_header_bytes)}")


def _made(name: str) -> type:
    """The protocol class called ``name`` (base and limits in the name), made once per process.

    Named and placed in this module so that pickle finds it: uvicorn hands its configuration
    to worker processes by pickling it, and a class is pickled as ``module.name``.
    """
    cls = _MADE.get(name)
    if cls is None:
        match = _MADE_NAME.fullmatch(name)
        if match is None or (match[1] == "JsonHttpToolsProtocol" and JsonHttpToolsProtocol is None):
            raise AttributeError(name)
        base = JsonH11Protocol if match[1] == "JsonH11Protocol" else JsonHttpToolsProtocol
        cls = type(name, (base,), {"max_headers": int(match[2]), "max_header_bytes": int(match[3]), "__module__": __name__})
        cls.__qualname__ = name
        _MADE[name] = cls
    return cls


def __getattr__(name: str) -> type:  # PEP 562: a worker unpickling a protocol class made in ``serve``
    return _made(name)


def quiet_logs() -> None:
    """The server's logging, in ``serve`` and in every worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Casbin logs every decision (a miss as a warning, with principal ids): the API's own
    # answers say what was refused, so only Casbin's errors are kept.
    logging.getLogger("casbin").setLevel(logging.ERROR)
    # Presidio logs every analysis at INFO (dozens of lines per access answer): warnings only.
    for name in ("presidio-analyzer", "presidio-anonymizer", "presidio_analyzer", "presidio_anonymizer"):
        logging.getLogger(name).setLevel(logging.WARNING)


def worker_app() -> Any:
    """The app of one worker process (uvicorn's factory): the settings ``serve`` resolved."""
    from siloguard.api.app import create_app

    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigError(f"{SETTINGS_ENV} is not set: worker processes are started by `siloguard serve --workers N`")
    settings = Settings.model_validate_json(text)
    quiet_logs()
    return create_app(settings)
