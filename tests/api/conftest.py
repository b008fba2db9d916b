"""An API over a prepared three-store run, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from siloguard.api.app import create_app
from siloguard.api.keys import create_key
from siloguard.clients.gating import store_keys
from siloguard.dsr.notifier import read_outbox
from siloguard.dsr.receipts import public_key_bytes, register_store_key
from siloguard.storage import create_engine
from tests.dsr.helpers import STORES, Env, make_env
from tests.storage.databases import BACKENDS, fresh_database


@dataclass
class Api:
    env: Env
    engine: Engine
    client: TestClient
    keys: dict[str, str] = field(default_factory=dict)

    def auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def as_key(self, name: str) -> dict[str, str]:
        return self.auth(self.keys[name])

    codes: dict[str, str] = field(default_factory=dict)

    def code(self, request_id: str) -> str:
        """The request's code from the outbox (remembered: the outbox is emptied when the request ends)."""
        messages = read_outbox(self.engine, request_id)
        if not messages:
            return self.codes[request_id]
        match = re.search(r"is ([0-9]{8})\.", messages[-1]["body"])
        assert match, "the outbox message carries the code"
        self.codes[request_id] = match.group(1)
        return match.group(1)

    def submit(self, kind: str, ref: str, headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        reply = self.client.post("/v1/requests", json={"kind": kind, "customer_ref": ref, **extra}, headers=headers or {})
        assert reply.status_code in (200, 201), reply.text
        return reply.json()["request"]

    def app_service(self) -> Any:
        return self.client.app.state.service  # type: ignore[attr-defined]

    def service_requests(self, ref: str, kind: str) -> str:
        """The id of the subject's latest completed request of ``kind``."""
        service = self.app_service()
        rows = [r for r in service.list(subject_digest=service.digest(ref)) if r["kind"] == kind and r["status"] == "completed"]
        return max(rows, key=lambda r: r["received_at"])["id"]

    def verified(self, kind: str, ref: str, *, sync: bool = True, **extra: Any) -> tuple[dict[str, Any], str]:
        """Submit and verify: (request, subject token header value).

        With ``sync`` (not for erasure, whose tests drive the stores themselves) every store then
        does its tasks (:meth:`sync`), and the request is read again.
        """
        request = self.submit(kind, ref, **extra)
        reply = self.client.post(f"/v1/requests/{request['id']}/verify", json={"code": self.code(request["id"])})
        assert reply.status_code == 200, reply.text
        row, token = reply.json()["request"], reply.json()["subject_token"]
        if sync and kind != "erasure":
            self.sync()
            row = self.client.get(f"/v1/requests/{row['id']}", headers=self.auth(token)).json()
        return row, token

    def sync(self, *stores: str) -> list[dict[str, Any]]:
        """Each store pulls its tasks and does them (``siloguard store sync``), here through the test client."""
        from siloguard.dsr.sync import sync_store

        done: list[dict[str, Any]] = []
        for store in stores or STORES:
            saved = self.client.headers.get("Authorization")
            self.client.headers["Authorization"] = f"Bearer {self.keys[f'store_{store}']}"
            try:
                done += sync_store(self.client, self.env.settings, store)
            finally:
                if saved is None:
                    del self.client.headers["Authorization"]
                else:
                    self.client.headers["Authorization"] = saved
        return done


def build_api(tmp_path: Path, url: str, *, service_factory: Any = None, **api_settings: object) -> Iterator[Api]:
    env = make_env(tmp_path, url, **api_settings)
    engine = create_engine(url)
    for store in STORES:
        register_store_key(engine, store, public_key_bytes(store_keys(env.settings, store)))
    keys = {}
    for name, role, store in [
        ("api_service", "api_service", None), ("compliance_officer", "compliance_officer", None), ("dpo", "dpo", None),
        ("store_alpha", "store_operator", "alpha"), ("store_beta", "store_operator", "beta"),
        ("store_gamma", "store_operator", "gamma"), ("trainer_alpha", "store_trainer", "alpha"),
    ]:
        keys[name] = create_key(engine, role, store=store)[1]
    service = service_factory(env, engine) if service_factory else None
    app = create_app(env.settings, service=service)
    try:
        with TestClient(app) as client:
            yield Api(env, engine, client, keys)
    finally:
        app.state.service.audit.close()
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    with fresh_database(request.param, tmp_path) as url:
        yield from build_api(tmp_path, url)


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[Api]:
    with fresh_database("sqlite", tmp_path) as url:
        yield from build_api(tmp_path, url)
