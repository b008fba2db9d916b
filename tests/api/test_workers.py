"""Several server processes: rate limits counted in Redis hold across them; ``serve --workers N``.

The servers are real ``siloguard serve`` processes on loopback, over one SQLite file and the
Redis every machine runs on 127.0.0.1:6379 (``.ci/run`` makes sure it answers); each test
counts under a prefix of its own, so runs never share counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from siloguard.api.protect import Protect, rate_storage, storage_reachable

REDIS = "redis://127.0.0.1:6379/0"
SILOGUARD = [sys.executable, "-m", "siloguard.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(tmp_path: Path) -> dict[str, str]:
    """Environment of a migrated service database and a run of two stores."""
    if not storage_reachable(REDIS):
        pytest.fail(f"Redis does not answer at {REDIS}: start redis-server (.ci/run does)")
    work = tmp_path / "run"
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"stores": ["alpha", "beta"]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILOGUARD_")} | {
        "SILOGUARD_DATABASE__URL": f"sqlite:///{tmp_path / 'api.db'}",
        "SILOGUARD_KEYS__ROOT": str(tmp_path / "keys"),
        "SILOGUARD_WORK_DIR": str(work),
        "SILOGUARD_AUDIT__SIGNING_KEY": str(tmp_path / "none.key"),
        "SILOGUARD_API__RESUME_EVERY_SECONDS": "3600",
        "SILOGUARD_API__RATE_PER_IP": "6/minute",
        "SILOGUARD_API__RATE_PER_KEY": "1000/minute",
        "SILOGUARD_API__RATE_STORAGE": REDIS,
        "SILOGUARD_API__RATE_KEY_PREFIX": "test-" + secrets.token_hex(6),
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    subprocess.run([*SILOGUARD, "db", "upgrade"], env=env, check=True, capture_output=True)
    return env


@contextmanager
def serving(env: dict[str, str], tmp_path: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    log = tmp_path / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*SILOGUARD, "serve", "--port", str(port), *extra], env=env, stdout=out, stderr=out,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the server did not answer in 60 s: {log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _statuses(urls: list[str], n: int) -> list[int]:
    """``n`` health checks, each on a new connection, taking the URLs in turn."""
    out = []
    for i in range(n):
        with httpx.Client(base_url=urls[i % len(urls)], timeout=10) as client:
            out.append(client.get("/v1/health").status_code)
    return out


def test_when_two_server_processes_count_in_redis_then_the_per_address_limit_holds_across_them(site, tmp_path: Path) -> None:
    """6 requests a minute per address: 8 requests alternating between two processes get 6 answers and 2 refusals."""
    with serving(site, tmp_path) as (a, _), serving(site, tmp_path) as (b, _):
        assert _statuses([a, b], 8) == [200] * 6 + [429] * 2


def test_when_two_server_processes_count_in_memory_then_each_allows_the_whole_limit(site, tmp_path: Path) -> None:
    """What Redis fixes: in process memory each process counts alone (the single-process default)."""
    memory = site | {"SILOGUARD_API__RATE_STORAGE": "memory://"}
    with serving(memory, tmp_path) as (a, _), serving(memory, tmp_path) as (b, _):
        assert _statuses([a, b], 8) == [200] * 8


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid`` (multiprocessing's spawned children)."""
    return [p for p in _children(pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_serve_with_two_workers_runs_two_processes_that_share_the_limit(site, tmp_path: Path) -> None:
    with serving(site, tmp_path, "--workers", "2") as (url, proc):
        deadline = time.monotonic() + 60
        while len(_workers(proc.pid)) < 2:  # the supervisor binds the socket, then starts its workers
            assert time.monotonic() < deadline, "serve --workers 2 did not start two workers"
            time.sleep(0.2)
        assert _statuses([url], 9) == [200] * 6 + [429] * 3
        assert len(_workers(proc.pid)) == 2


def test_serve_refuses_several_workers_counting_in_memory(site) -> None:
    from siloguard.cli import app

    env = site | {"SILOGUARD_API__RATE_STORAGE": "memory://"}
    result = CliRunner().invoke(app, ["serve", "--workers", "2"], env=env)
    assert result.exit_code != 0
    assert "would allow 2 times every rate limit" in result.output and "redis://" in result.output


def test_when_the_rate_limit_storage_is_unreachable_then_requests_are_refused_not_let_through() -> None:
    reached: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    dead = _free_port()  # nothing listens there
    protect = Protect(app, max_body_bytes=1024, rate_per_key="100/minute", rate_per_ip="100/minute",
                      storage=rate_storage(f"redis://127.0.0.1:{dead}/0", key_prefix="test-dead"))
    scope = {"type": "http", "method": "GET", "path": "/v1/health", "headers": [], "client": ("127.0.0.1", 1)}
    asyncio.run(protect(scope, receive, send))
    assert not reached
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["error"]["code"] == "rate_limiter_unavailable"


def test_serve_refuses_to_start_when_the_rate_limit_storage_is_unreachable(site) -> None:
    from siloguard.cli import app

    env = site | {"SILOGUARD_API__RATE_STORAGE": f"redis://127.0.0.1:{_free_port()}/0"}
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code != 0
    assert "cannot reach the rate-limit storage" in result.output
