"""Every route x every role: only the intended roles succeed (the Casbin policy decides)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from siloguard.audit import AuditLog
from siloguard.clients.gating import store_keys
from siloguard.dsr.receipts import Receipt, sign_receipt
from siloguard.dsr.service import DsrService
from tests.api.conftest import Api, build_api
from tests.dsr.helpers import OTHER, SUBJECT
from tests.storage.databases import fresh_database

CALLERS = ("anonymous", "subject", "other_subject", "api_service", "compliance_officer", "dpo",
           "store_alpha", "store_beta", "trainer_alpha")

# route -> the callers that may use it (on the subject's request, store alpha).
INTENDED: dict[str, set[str]] = {
    "health": set(CALLERS),
    "submit": {"anonymous", "subject", "api_service"},
    "verify": {"anonymous", "subject", "api_service"},
    "list": {"subject", "other_subject", "compliance_officer", "dpo"},  # a subject lists their own
    "get": {"subject", "compliance_officer", "dpo"},
    "access": {"subject", "dpo"},
    "extend": {"dpo"},
    "deny": {"dpo"},
    "tasks": {"store_alpha"},
    "task": {"store_alpha"},
    "claim": {"store_alpha"},
    "receipt_key": {"store_alpha"},
    "receipt": {"store_alpha"},
    "done": {"store_alpha"},
    "consent_get": {"subject", "other_subject"},  # each their own consent
    "consent_put": {"subject", "other_subject"},
}


def _stub_access(env: Any, engine: Any) -> DsrService:
    # The access answer's content is tested in tests/api/test_access.py; here only who may read it.
    return DsrService(env.settings, engine, AuditLog.open(env.settings))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, dict[str, str]]]]:
    tmp: Path = tmp_path_factory.mktemp("authz")
    with fresh_database("sqlite", tmp) as url:
        for api in build_api(tmp, url, service_factory=_stub_access):
            _, subject_token = api.verified("access", SUBJECT)
            _, other_token = api.verified("access", OTHER)
            headers = {name: api.as_key(name) for name in api.keys} | {
                "anonymous": {}, "subject": api.auth(subject_token), "other_subject": api.auth(other_token),
            }
            yield api, headers


def _erasure(api: Api) -> dict[str, Any]:
    # A third customer: an erasure under way stops consent changes of its subject (409).
    request, _ = api.verified("erasure", "12583")
    return request


def _receipt_body(api: Api, request_id: str) -> tuple[str, dict[str, str]]:
    task = next(t for t in api.app_service().tasks(request_id) if t["store"] == "alpha")
    receipt = Receipt(task=task["id"], request=request_id, store="alpha", rows_erased=0, rows_remaining=0,
                      embeddings_erased=0, key_destroyed=True, erased_at=datetime.now(timezone.utc).isoformat())
    signature = sign_receipt(store_keys(api.env.settings, "alpha"), receipt)
    return task["id"], {"receipt": receipt.canonical().decode(), "signature": base64.b64encode(signature).decode()}


def _call(api: Api, route: str, headers: dict[str, str]) -> int:
    c = api.client
    if route == "health":
        return c.get("/v1/health", headers=headers).status_code
    if route == "submit":
        return c.post("/v1/requests", json={"kind": "access", "customer_ref": SUBJECT}, headers=headers).status_code
    if route == "verify":
        request = api.submit("access", SUBJECT)
        return c.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"])}, headers=headers).status_code
    if route == "list":
        return c.get("/v1/requests", headers=headers).status_code
    own = api.service_requests(SUBJECT, "access")
    if route == "get":
        return c.get(f"/v1/requests/{own}", headers=headers).status_code
    if route == "access":  # a fresh answer each time: the subject's download deletes it
        fresh, _ = api.verified("access", SUBJECT)
        return c.get(f"/v1/requests/{fresh['id']}/access", headers=headers).status_code
    if route in ("extend", "deny"):
        request = _erasure(api)
        return c.post(f"/v1/requests/{request['id']}/{route}", json={"reason": "complexity"}, headers=headers).status_code
    if route == "tasks":
        return c.get("/v1/stores/alpha/tasks", headers=headers).status_code
    if route == "task":
        request = _erasure(api)
        task = next(t for t in api.app_service().tasks(request["id"]) if t["store"] == "alpha")
        return c.get(f"/v1/stores/alpha/tasks/{task['id']}", headers=headers).status_code
    if route == "claim":
        request = _erasure(api)
        task = next(t for t in api.app_service().tasks(request["id"]) if t["store"] == "alpha")
        return c.post(f"/v1/stores/alpha/tasks/{task['id']}/claim", headers=headers).status_code
    if route == "receipt_key":
        return c.get("/v1/stores/alpha/receipt-key", headers=headers).status_code
    if route == "receipt":
        request = _erasure(api)
        task_id, body = _receipt_body(api, request["id"])
        return c.post(f"/v1/stores/alpha/tasks/{task_id}/receipt", json=body, headers=headers).status_code
    if route == "done":  # a store's answer to its access task (a fresh request each time)
        request, _ = api.verified("access", SUBJECT, sync=False)
        task = next(t for t in api.app_service().tasks(request["id"]) if t["store"] == "alpha")
        part = {"part": {"stores": [{"store": "alpha", "dataset": "transactions", "records": 0, "categories": [], "data": []}]}}
        return c.post(f"/v1/stores/alpha/tasks/{task['id']}/done", json={"answer": json.dumps(part)}, headers=headers).status_code
    if route == "consent_get":
        return c.get("/v1/consent", headers=headers).status_code
    if route == "consent_put":
        return c.put("/v1/consent/marketing.advertising.first_party.targeted", json={"action": "grant"}, headers=headers).status_code
    raise AssertionError(route)


def test_every_route_and_role_only_intended_roles_succeed(world: tuple[Api, dict[str, dict[str, str]]]) -> None:
    api, headers = world
    wrong = []
    for route, allowed in INTENDED.items():
        for caller in CALLERS:
            status = _call(api, route, headers[caller])
            ok = status < 400
            if ok != (caller in allowed):
                wrong.append(f"{route} as {caller}: HTTP {status}, expected {'success' if caller in allowed else 'refusal'}")
            elif not ok:
                assert status in (401, 403, 404), f"{route} as {caller}: refused with {status}"
    assert not wrong, "\n".join(wrong)


def test_the_matrix_covers_every_route_of_the_app(world: tuple[Api, dict[str, dict[str, str]]]) -> None:
    api, _ = world
    paths = api.client.get("/openapi.json").json()["paths"]
    served = {(method, path) for path, operations in paths.items() for method in operations if path.startswith("/v1/")}
    assert len(served) == len(INTENDED), sorted(served)


def test_refusals_say_why_without_naming_the_subject(world: tuple[Api, dict[str, dict[str, str]]]) -> None:
    api, headers = world
    reply = api.client.get("/v1/stores/alpha/tasks", headers=headers["store_beta"])
    assert reply.status_code == 403
    assert reply.json() == {"error": {"status": 403, "code": "forbidden", "message": "the access policy does not allow this operation for your role"}}
    reply = api.client.get("/v1/requests")
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthenticated"
    reply = api.client.get("/v1/requests", headers={"Authorization": "Bearer sgk_abcdefghijkl_" + "x" * 43})
    assert reply.status_code == 401 and SUBJECT not in reply.text


def test_a_revoked_key_is_refused_at_once(world: tuple[Api, dict[str, dict[str, str]]]) -> None:
    from siloguard.api.keys import create_key, revoke_key

    api, _ = world
    key, text = create_key(api.engine, "dpo")
    assert api.client.get("/v1/requests", headers=api.auth(text)).status_code == 200
    assert revoke_key(api.engine, key.id)
    assert api.client.get("/v1/requests", headers=api.auth(text)).status_code == 401
