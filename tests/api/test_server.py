"""The API behind a real uvicorn server, started with the options ``siloguard serve`` uses.

Each test starts ``uvicorn.Server`` with :func:`siloguard.api.server.uvicorn_options` (only the
address is replaced: 127.0.0.1, port 0 for a free one) in a thread, talks to it over TCP (httpx, or raw sockets for
what a client library will not send) and stops it. The findings of the outside security test:
proxy headers believed from loopback, uvicorn's own errors in text/plain, no limit on headers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from siloguard.api.app import create_app
from siloguard.api.protect import Protect
from siloguard.api.server import uvicorn_options
from tests.dsr.helpers import make_env
from tests.storage.databases import fresh_database


@dataclass
class Running:
    host: str
    port: int
    settings: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send ``data`` on a fresh connection; the response (status, headers, body) read to the close."""
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return int(status_line.split()[1]), headers, body


@contextmanager
def running(tmp_path: Path, http: Any = "auto", **api: object) -> Iterator[Running]:
    """A real uvicorn server on 127.0.0.1 with ``siloguard serve``'s options for these settings."""
    with fresh_database("sqlite", tmp_path) as url:
        env = make_env(tmp_path, url, **api)
        app = create_app(env.settings)
        options = uvicorn_options(env.settings, http=http)
        server = uvicorn.Server(uvicorn.Config(app, **{**options, "host": "127.0.0.1", "port": 0}))
        thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert thread.is_alive(), "the server stopped while starting"
                assert time.monotonic() < deadline, "the server did not start in 20 s"
                time.sleep(0.02)
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            yield Running(host, port, env.settings)
        finally:
            server.should_exit = True
            thread.join(20)
            app.state.service.audit.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(params=["httptools", "h11"])
def http(request: pytest.FixtureRequest) -> str:
    """uvicorn's two HTTP/1.1 parsers: ``auto`` picks httptools when it is installed, else h11."""
    if request.param == "httptools":
        pytest.importorskip("httptools")
    return str(request.param)


def assert_error_shape(status: int, content_type: str, body: bytes, expected: int, code: str) -> dict[str, Any]:
    assert status == expected, body[:300]
    assert content_type.split(";")[0].strip() == "application/json", content_type
    error = json.loads(body)["error"]
    assert set(error) == {"status", "code", "message"} and error["status"] == expected and error["code"] == code
    return error


# ---- 1. proxy headers ------------------------------------------------------------------------


def test_finding_10_a_rotating_forwarded_for_does_not_escape_the_per_address_limit(tmp_path: Path) -> None:
    """Default settings trust no proxy: X-Forwarded-For from 127.0.0.1 does not change the client."""
    with running(tmp_path, rate_per_ip="5/minute") as server, httpx.Client(base_url=server.url) as client:
        statuses = [client.get("/v1/health", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(8)]
    assert statuses == [200] * 5 + [429] * 3


def test_a_trusted_proxy_forwards_the_client_address(tmp_path: Path) -> None:
    """With trusted_proxies = [127.0.0.1], each forwarded address has its own count; another
    connecting address (127.0.0.2, not a trusted proxy) is counted as itself whatever it forwards."""
    with running(tmp_path, rate_per_ip="5/minute", trusted_proxies=["127.0.0.1"]) as server:
        with httpx.Client(base_url=server.url) as client:
            rotating = [client.get("/v1/health", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(8)]
            same = [client.get("/v1/health", headers={"X-Forwarded-For": "198.51.100.7"}).status_code for _ in range(7)]
        untrusted = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with untrusted:
            other = [untrusted.get("/v1/health", headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code for i in range(7)]
    assert rotating == [200] * 8
    assert same == [200] * 5 + [429] * 2
    assert other == [200] * 5 + [429] * 2


# ---- 2. uvicorn's own errors ----------------------------------------------------------------


def test_finding_12_a_malformed_request_line_gets_the_json_error_shape(tmp_path: Path, http: str) -> None:
    with running(tmp_path, http) as server:
        status, headers, body = server.raw(b"GET /v1/health HTTP/1.1 trailing-garbage\r\nHost: x\r\n\r\n")
        bad_header = server.raw(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    error = assert_error_shape(status, headers.get("content-type", ""), body, 400, "bad_request")
    assert "HTTP" in error["message"] and "trailing-garbage" not in error["message"]
    assert_error_shape(bad_header[0], bad_header[1].get("content-type", ""), bad_header[2], 400, "bad_request")


# ---- 3. header limits -----------------------------------------------------------------------


def test_issue_19_two_thousand_headers_are_refused_with_431(tmp_path: Path, http: str) -> None:
    with running(tmp_path, http) as server, httpx.Client(base_url=server.url) as client:
        reply = client.get("/v1/health", headers={f"x-h{i}": "v" for i in range(2000)})
    error = assert_error_shape(reply.status_code, reply.headers.get("content-type", ""), reply.content, 431, "headers_too_large")
    assert "100 headers" in error["message"] and "8192 bytes" in error["message"]


def test_issue_19_one_200_kb_header_is_refused_with_431(tmp_path: Path, http: str) -> None:
    """431, not 400, with both parsers, before the whole header has arrived. httptools has no
    size limit of its own: the protocol counts the bytes of the unfinished head and refuses once
    they pass the head limit. h11 refuses a head over its buffer limit (set to the same number)
    with a 431 hint, which uvicorn's own protocol drops (it says 400 text/plain); ours keeps it."""
    with running(tmp_path, http) as server, httpx.Client(base_url=server.url) as client:
        reply = client.get("/v1/health", headers={"X-Big": "a" * 200_000})
    error = assert_error_shape(reply.status_code, reply.headers.get("content-type", ""), reply.content, 431, "headers_too_large")
    assert "8192 bytes" in error["message"]


def test_headers_over_the_byte_limit_in_one_packet_are_refused_with_431(tmp_path: Path, http: str) -> None:
    """A whole head that arrives at once, 20 headers of 500 bytes (10,000 > 8,192)."""
    with running(tmp_path, http) as server, httpx.Client(base_url=server.url) as client:
        reply = client.get("/v1/health", headers={f"x-h{i}": "v" * 500 for i in range(20)})
    assert_error_shape(reply.status_code, reply.headers.get("content-type", ""), reply.content, 431, "headers_too_large")


def test_normal_requests_still_work_on_one_connection(tmp_path: Path, http: str) -> None:
    """Health, headers just under the limits, and a body larger than the head limit arriving
    with its head (the head limit counts the head only), on one kept-alive connection."""
    with running(tmp_path, http, max_body_bytes=100_000) as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/v1/health")
        near_limit = client.get("/v1/health", headers={f"x-h{i}": "v" * 60 for i in range(80)})
        big_body = client.post("/v1/requests", content=b'{"kind": "access", "customer_ref": "' + b"1" * 60_000 + b'"}',
                               headers={"Content-Type": "application/json"})
        last = client.get("/v1/health")
    assert first.status_code == 200 and first.json()["status"] == "ok"
    assert near_limit.status_code == 200
    assert big_body.status_code == 422, big_body.text  # reached validation: customer_ref is too long
    assert last.status_code == 200


def test_uvicorn_options_validate_the_trusted_proxies(tmp_path: Path) -> None:
    from siloguard.config import Settings
    from siloguard.errors import ConfigError

    options = uvicorn_options(Settings.build())
    assert options["proxy_headers"] is False and options["access_log"] is False
    trusted = uvicorn_options(Settings.build().with_overrides(api={"trusted_proxies": ["10.0.0.5", "10.1.0.0/16"]}))
    assert trusted["proxy_headers"] is True and trusted["forwarded_allow_ips"] == ["10.0.0.5", "10.1.0.0/16"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        uvicorn_options(Settings.build().with_overrides(api={"trusted_proxies": ["proxy.internal"]}))


# ---- the middleware's own check (any ASGI server) --------------------------------------------


@pytest.mark.parametrize("headers", [[(f"x-h{i}".encode(), b"v") for i in range(11)], [(b"x-big", b"a" * 2000)]])
def test_protect_refuses_too_many_or_too_large_headers(headers: list[tuple[bytes, bytes]]) -> None:
    import asyncio

    reached = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    protect = Protect(app, max_body_bytes=1024, rate_per_key="100/minute", rate_per_ip="100/minute",
                      max_headers=10, max_header_bytes=1024)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "client": ("127.0.0.1", 1)}
    asyncio.run(protect(scope, receive, send))
    assert not reached
    assert sent[0]["status"] == 431
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "headers_too_large" and "10 headers" in error["message"] and "1024 bytes" in error["message"]
