"""A real server process killed with SIGKILL mid-load loses no request and finishes them after restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from siloguard.api.keys import create_key
from siloguard.clients.gating import store_keys
from siloguard.dsr.notifier import read_outbox
from siloguard.dsr.receipts import public_key_bytes, register_store_key
from siloguard.storage import create_engine
from siloguard.storage.orm import AuditEventRow, dsr_requests, dsr_transitions
from tests.dsr.helpers import STORES, Env, make_env
from tests.storage.databases import BACKENDS, fresh_database

SILOGUARD = str(Path(sys.executable).with_name("siloguard"))
STARTUP_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: Env, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        s = env.settings
        self.environ = os.environ | {
            "SILOGUARD_DATABASE__URL": s.database.url,
            "SILOGUARD_KEYS__ROOT": str(s.keys.root),
            "SILOGUARD_WORK_DIR": str(s.work_dir),
            "SILOGUARD_AUDIT__SIGNING_KEY": str(s.audit.signing_key),
            "SILOGUARD_AUDIT__PUBLIC_KEY": str(s.audit.public_key),
            "SILOGUARD_API__RATE_PER_KEY": "100000/minute",
            "SILOGUARD_API__RATE_PER_IP": "100000/minute",
            "SILOGUARD_API__RESUME_EVERY_SECONDS": "0.5",
        }
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([SILOGUARD, "serve", "--port", str(self.port)], env=self.environ, stdout=out, stderr=out)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling readiness, not synchronisation
        raise AssertionError(f"server not ready in {STARTUP_S} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(params=BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Env, Server]]:
    with fresh_database(request.param, tmp_path) as url:
        env = make_env(tmp_path, url)
        server = Server(env, tmp_path)
        try:
            yield env, server
        finally:
            server.kill()


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_during_load_loses_no_request_and_all_finish_after_restart(setup: tuple[Env, Server]) -> None:
    env, server = setup
    engine = create_engine(env.url)
    try:
        for store in STORES:
            register_store_key(engine, store, public_key_bytes(store_keys(env.settings, store)))
        store_key = {s: create_key(engine, "store_operator", store=s)[1] for s in STORES}
        server.start()

        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load(worker: int) -> None:
            with httpx.Client(base_url=server.url, timeout=5) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    kind = ("erasure", "consent", "opt_out")[n % 3]
                    body = {"kind": kind, "customer_ref": f"{worker}{n:04d}x"}
                    if kind == "consent":
                        body["consent"] = [{"purpose": "personalize.profiling", "action": "grant"}]
                    try:
                        reply = client.post("/v1/requests", json=body)
                    except httpx.HTTPError:
                        return  # the server died mid-request: that request was never acknowledged
                    if reply.status_code == 201:
                        rid = reply.json()["request"]["id"]
                        try:
                            code = _code(engine, rid)
                            client.post(f"/v1/requests/{rid}/verify", json={"code": code})
                        except httpx.HTTPError:
                            pass
                        with lock:
                            acknowledged.append(rid)

        workers = [threading.Thread(target=load, args=(w,)) for w in range(1, 5)]
        for w in workers:
            w.start()
        _wait_for(lambda: len(acknowledged) >= 40, "40 acknowledged requests")
        server.kill()
        stop.set()
        for w in workers:
            w.join(timeout=30)
        assert acknowledged

        with engine.connect() as conn:
            held = {r.id: r.status for r in conn.execute(sa.select(dsr_requests.c.id, dsr_requests.c.status))}
        assert set(acknowledged) <= set(held), "every acknowledged request survives the kill"
        assert {"verifying", "in_progress"} & set(held.values()), "the kill hit requests still in progress"

        server.start()
        # Requests still waiting for a code can be verified after the restart.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for rid, status in held.items():
                if status == "verifying":
                    assert client.post(f"/v1/requests/{rid}/verify", json={"code": _code(engine, rid)}).status_code == 200

            def settled() -> bool:  # every request has its stores' tasks (the stores do them next)
                with engine.connect() as conn:
                    rows = conn.execute(sa.select(dsr_requests.c.kind, dsr_requests.c.status)).all()
                return all(s in ("completed", "in_progress") for _k, s in rows)

            _wait_for(settled, "every verified request carried forward")
        for store in STORES:  # each store runs `siloguard store sync` against the real server
            done = subprocess.run(
                [SILOGUARD, "store", "sync", "--store", store, "--api", server.url],
                env=server.environ | {"SILOGUARD_STORE_KEY": store_key[store]}, capture_output=True, text=True, timeout=300,
            )
            assert done.returncode == 0, done.stderr
            assert f"store {store}:" in done.stdout and "receipt accepted" in done.stdout

        with engine.connect() as conn:
            statuses = {r.status for r in conn.execute(sa.select(dsr_requests.c.status))}
            logged = sa.select(AuditEventRow.event_id).where(AuditEventRow.event_id == dsr_transitions.c.event_id)
            unaudited = conn.execute(sa.select(sa.func.count()).select_from(dsr_transitions).where(~logged.exists())).scalar()
        assert statuses == {"completed"}
        assert unaudited == 0
    finally:
        engine.dispose()


def _code(engine, request_id: str) -> str:  # type: ignore[no-untyped-def]
    import re

    body = read_outbox(engine, request_id)[-1]["body"]
    match = re.search(r"is ([0-9]{8})\.", body)
    assert match
    return match.group(1)
