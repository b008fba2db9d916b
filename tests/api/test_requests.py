"""Requests through the API: verification, idempotency, clocks, GPC, consent, extension, audit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from siloguard.api.app import create_app
from siloguard.audit import AuditLog
from siloguard.clients.gating import store_consent
from siloguard.dsr.service import DsrService
from siloguard.errors import StorageError
from siloguard.policies.consent import SALE_AND_SHARING
from siloguard.storage import create_engine
from tests.api.conftest import Api, build_api
from tests.dsr.helpers import OTHER, STORES, SUBJECT, declare_jurisdictions, make_env
from tests.storage.databases import fresh_database

TARGETED = "marketing.advertising.first_party.targeted"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 31, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Api, Clock]]:
    clock = Clock()

    def factory(env: Any, engine: Any) -> DsrService:
        return DsrService(env.settings, engine, AuditLog.open(env.settings), clock=clock)

    with fresh_database("sqlite", tmp_path) as url:
        for api in build_api(tmp_path, url, service_factory=factory):
            yield api, clock


def _consents(api: Api, ref: str, purpose: str) -> set[str]:
    now = datetime.now(timezone.utc) + timedelta(seconds=1)
    return {s for s in STORES if ref in store_consent(api.env.settings, s).subjects_with_basis(purpose, [ref], now)}


def test_idempotency_key_returns_the_same_request_and_refuses_reuse_for_another(api: Api) -> None:
    headers = {"Idempotency-Key": "form-7f3a"}
    first = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": SUBJECT}, headers=headers)
    again = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": SUBJECT}, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["request"]["id"] == first.json()["request"]["id"] and again.json()["created"] is False
    # Without credentials the key is bound to the whole request: another body is another request.
    other = api.client.post("/v1/requests", json={"kind": "erasure", "customer_ref": SUBJECT}, headers=headers)
    assert other.status_code == 201 and other.json()["request"]["id"] != first.json()["request"]["id"]
    # A credential's key is its own: reused for another kind of request, it is refused.
    service = {**headers, **api.as_key("api_service")}
    mine = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": OTHER}, headers=service)
    assert mine.status_code == 201 and mine.json()["request"]["id"] != first.json()["request"]["id"]
    reused = api.client.post("/v1/requests", json={"kind": "erasure", "customer_ref": OTHER}, headers=service)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "conflict"
    # The same key from another subject is another request.
    theirs = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": OTHER}, headers=headers)
    assert theirs.status_code == 201 and theirs.json()["request"]["id"] != first.json()["request"]["id"]


def test_wrong_codes_are_limited_and_close_the_request(sqlite_api: Api) -> None:
    api = sqlite_api
    request = api.submit("erasure", SUBJECT)
    right = api.code(request["id"])
    wrong = f"{(int(right) + 1) % 10**8:08d}"
    for left in range(4, 0, -1):
        reply = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": wrong})
        assert reply.status_code == 401 and f"{left} attempt(s) left" in reply.json()["error"]["message"]
    reply = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": wrong})
    assert reply.status_code == 401 and "too many" in reply.json()["error"]["message"]
    assert api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": right}).status_code == 409
    assert api.app_service().get(request["id"])["status"] == "denied"
    assert right not in reply.text


def test_an_expired_code_closes_the_request(clocked: tuple[Api, Clock]) -> None:
    api, clock = clocked
    request = api.submit("access", SUBJECT)
    clock.now += timedelta(seconds=api.env.settings.api.code_ttl_seconds + 1)
    reply = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"])})
    assert reply.status_code == 401 and "expired" in reply.json()["error"]["message"]
    assert api.app_service().get(request["id"])["status"] == "unverified"


def test_every_transition_is_audited_with_ids_only(sqlite_api: Api) -> None:
    api = sqlite_api
    request, _ = api.verified("access", SUBJECT, contact="jane.doe@example.com")
    service = api.app_service()
    steps = [t["to_status"] for t in service.transitions(request["id"])]
    assert steps == ["received", "verifying", "verified", "in_progress", "completed"]
    log = AuditLog.open(api.env.settings)
    try:
        events = [s for s in log.iter_events() if s.event.request == request["id"]]
        transitions = [e for e in events if e.event.action != "dsr.task_done"]
        assert [e.event.action for e in transitions] == [f"dsr.{s}" for s in steps]
        done = [e.event for e in events if e.event.action == "dsr.task_done"]  # each store's answer, audited
        assert sorted(e.store for e in done) == sorted(STORES) and {e.decision for e in done} == {"info"}
        assert transitions[0].event.reason == "gdpr" and transitions[0].event.resource == "dsr:access"
        blob = b"".join(s.body for s in log.iter_events())
    finally:
        log.close()
    assert SUBJECT.encode() not in blob and b"jane" not in blob and api.code(request["id"]).encode() not in blob
    logged = {s.event.event_id for s in AuditLog.open(api.env.settings).iter_events()}
    assert {t["event_id"] for t in service.transitions(request["id"])} <= logged
    assert service.flush_audit() == 0


def test_ccpa_opt_out_needs_no_verification_and_is_applied_in_every_store(api: Api) -> None:
    declare_jurisdictions(api.env, dict.fromkeys(STORES, "ccpa"))
    for store in STORES:
        store_consent(api.env.settings, store).record([SUBJECT], "third_party_sharing", "grant", source="web")
    assert _consents(api, SUBJECT, "third_party_sharing") == set(STORES)
    request = api.submit("opt_out", SUBJECT)
    assert request["status"] == "in_progress" and request["jurisdiction"] == "ccpa"  # a task per store
    assert _consents(api, SUBJECT, "third_party_sharing") == set(STORES)  # until the stores sync
    done = api.sync()
    assert sorted(d["kind"] for d in done) == ["effects"] * len(STORES)
    assert _consents(api, SUBJECT, "third_party_sharing") == set()
    request = api.app_service().get(request["id"])
    assert request["status"] == "completed" and request["due_at"] > request["received_at"]


def test_gpc_header_on_a_subject_request_records_an_opt_out_of_sale_and_sharing_once_verified(api: Api) -> None:
    for store in STORES:
        store_consent(api.env.settings, store).record([SUBJECT, OTHER], SALE_AND_SHARING[1], "grant", source="web")
    request = api.submit("access", SUBJECT, headers={"Sec-GPC": "1"})
    assert _consents(api, SUBJECT, SALE_AND_SHARING[1]) == set(STORES)  # anyone can name a customer
    reply = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"])})
    assert reply.status_code == 200
    api.sync()
    assert _consents(api, SUBJECT, SALE_AND_SHARING[1]) == set()
    assert _consents(api, OTHER, SALE_AND_SHARING[1]) == set(STORES)


def test_consent_endpoints_grant_withdraw_and_list_per_store(api: Api) -> None:
    _, token = api.verified("access", SUBJECT)
    headers = api.auth(token)
    reply = api.client.put(f"/v1/consent/{TARGETED}", json={"action": "grant"}, headers=headers)
    assert reply.status_code == 200

    def state(reply: Any) -> dict[str, dict[str, tuple[bool | None, bool]]]:
        return {s["store"]: {p["purpose"]: (p["consented"], p["applied"]) for p in s["purposes"]} for s in reply.json()["stores"]}

    asked = state(reply)
    assert set(asked) == set(STORES) and all(s[TARGETED] == (True, False) for s in asked.values())  # asked, not yet applied
    assert all(s["personalize.profiling"] == (None, True) for s in asked.values())  # never asked here
    assert _consents(api, SUBJECT, TARGETED) == set()  # the stores record it when they sync
    api.sync()
    assert all(s[TARGETED] == (True, True) for s in state(api.client.get("/v1/consent", headers=headers)).values())
    assert _consents(api, SUBJECT, TARGETED) == set(STORES) and _consents(api, OTHER, TARGETED) == set()
    api.client.put(f"/v1/consent/{TARGETED}", json={"action": "withdraw"}, headers=headers)
    assert all(s[TARGETED] == (False, False) for s in state(api.client.get("/v1/consent", headers=headers)).values())
    api.sync()
    assert _consents(api, SUBJECT, TARGETED) == set()
    assert api.client.put("/v1/consent/not.a.purpose", json={"action": "grant"}, headers=headers).status_code == 422


def test_consent_request_applies_its_changes_after_verification(api: Api) -> None:
    request, _ = api.verified("consent", SUBJECT, consent=[{"purpose": "personalize.profiling", "action": "grant"}])
    assert request["status"] == "completed"
    assert _consents(api, SUBJECT, "personalize.profiling") == set(STORES)


def test_officers_list_overdue_and_near_due_requests(clocked: tuple[Api, Clock]) -> None:
    api, clock = clocked
    old = api.submit("erasure", SUBJECT)  # received 31 January: due end of 28 February
    clock.now = datetime(2026, 2, 20, tzinfo=timezone.utc)
    recent = api.submit("erasure", OTHER)  # due end of 20 March
    officer = api.as_key("compliance_officer")
    due = api.client.get("/v1/requests", params={"due_within": "P10D"}, headers=officer).json()["requests"]
    assert [r["id"] for r in due] == [old["id"]]
    clock.now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    listed = api.client.get("/v1/requests", params={"due_within": "P30D"}, headers=officer).json()["requests"]
    assert [(r["id"], r["overdue"]) for r in listed] == [(old["id"], True), (recent["id"], False)]


def test_dpo_extends_once_inside_the_first_month(clocked: tuple[Api, Clock]) -> None:
    api, clock = clocked
    request, _ = api.verified("erasure", SUBJECT)
    dpo = api.as_key("dpo")
    clock.now = datetime(2026, 2, 27, tzinfo=timezone.utc)
    reply = api.client.post(f"/v1/requests/{request['id']}/extend", json={"reason": "complexity"}, headers=dpo)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "extended" and reply.json()["due_at"] == "2026-05-01T00:00:00Z"
    again = api.client.post(f"/v1/requests/{request['id']}/extend", json={"reason": "complexity"}, headers=dpo)
    assert again.status_code == 409


def test_errors_have_one_shape_and_do_not_echo_values(sqlite_api: Api) -> None:
    reply = sqlite_api.client.post("/v1/requests", json={"kind": "access", "customer_ref": "jane@example.com"})
    assert reply.status_code == 422
    assert set(reply.json()) == {"error"} and set(reply.json()["error"]) == {"status", "code", "message"}
    assert "jane" not in reply.text and "customer_ref" in reply.text
    assert sqlite_api.client.get("/v1/requests/not-an-id").json()["error"]["status"] == 422
    assert sqlite_api.client.get("/v1/nothing").json()["error"]["code"] == "not_found"


def test_large_bodies_are_refused(sqlite_api: Api) -> None:
    body = b'{"kind": "access", "customer_ref": "' + b"1" * 20000 + b'"}'
    reply = sqlite_api.client.post("/v1/requests", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "too_large"


def test_large_streamed_bodies_are_refused_too(sqlite_api: Api) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the middleware counts the bytes
        yield b'{"kind": "access", "customer_ref": "'
        for _ in range(40):
            yield b"1" * 1000
        yield b'"}'

    reply = sqlite_api.client.post("/v1/requests", content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "too_large"
    assert sqlite_api.app_service().list() == []


def test_rate_limits_per_address_and_per_key(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        for api in build_api(tmp_path, url, rate_per_ip="100/minute", rate_per_key="3/minute"):
            dpo = api.as_key("dpo")
            codes = [api.client.get("/v1/requests", headers=dpo).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            limited = api.client.get("/v1/requests", headers=dpo)
            assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["code"] == "rate_limited"
            assert api.client.get("/v1/requests", headers=api.as_key("compliance_officer")).status_code == 200
            codes = [api.client.get("/v1/health").status_code for _ in range(100)]
            assert codes[-1] == 429 and codes[0] == 200


def test_access_log_holds_no_personal_data(sqlite_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="siloguard.api.access"):
        request = sqlite_api.submit("access", SUBJECT, contact="jane.doe@example.com")
        sqlite_api.client.get(f"/v1/requests/{request['id']}?x={SUBJECT}")
    lines = [r.getMessage() for r in caplog.records if r.name == "siloguard.api.access"]
    assert lines and any("/v1/requests/{request_id}" in line for line in lines)
    assert not any(SUBJECT in line or "jane" in line or "testclient" in line or request["id"] in line for line in lines)


def test_app_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'migrated.db'}")
    settings = env.settings.with_overrides(database={"url": f"sqlite:///{tmp_path / 'empty.db'}"})
    with pytest.raises(StorageError, match="siloguard db upgrade"):
        create_app(settings)
    create_engine(settings.database.url).dispose()


def test_work_that_cannot_start_yet_is_picked_up_by_the_sweep(sqlite_api: Api) -> None:
    api = sqlite_api
    run = api.env.settings.work_dir / "run.json"
    saved = run.read_text()
    run.unlink()  # no prepared run: the stores are unknown for now
    request, _ = api.verified("consent", SUBJECT, sync=False, consent=[{"purpose": TARGETED, "action": "grant"}])
    assert request["status"] == "verified"
    service = api.app_service()
    assert service.resume() == 0 and service.get(request["id"])["status"] == "verified"
    run.write_text(saved)
    service.resume()
    assert service.get(request["id"])["status"] == "in_progress"  # the stores' tasks are filed
    api.sync()
    assert service.get(request["id"])["status"] == "completed"
    assert _consents(api, SUBJECT, TARGETED) == set(STORES)


def test_the_received_event_carries_the_deadline_the_api_gives(sqlite_api: Api) -> None:
    api = sqlite_api
    request = api.submit("opt_out", SUBJECT)
    log = AuditLog.open(api.env.settings)
    try:
        received = next(s.event for s in log.iter_events() if s.event.request == request["id"] and s.event.action == "dsr.received")
    finally:
        log.close()
    due = api.app_service().get(request["id"])["due_at"]
    due = due if due.tzinfo else due.replace(tzinfo=timezone.utc)
    assert received.counts["due_epoch_s"] == int(due.timestamp())
