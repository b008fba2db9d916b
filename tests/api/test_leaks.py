"""Regression tests for the outside security test of the privacy API (issue 12), one per finding.

Each test is named after its finding and failed on the code before the fix. Findings 6
(re-preparing a run), 10 and 12a (proxy headers, uvicorn's own 400s: tests/api/test_server.py)
and 11 (``audit verify`` on a wiped log: tests/audit/test_cli.py) are tested where their code is.
"""

from __future__ import annotations

import base64
import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from siloguard.audit import AuditLog
from siloguard.cli import app as cli_app
from siloguard.clients.gating import store_keys
from siloguard.compliance.checks import request_deadlines
from siloguard.dsr.errors import DsrError
from siloguard.dsr.notifier import read_outbox
from siloguard.dsr.receipts import Receipt, public_key_bytes, sign_receipt
from siloguard.dsr.service import DsrService
from siloguard.dsr.sync import sync_store
from siloguard.errors import ConfigError
from siloguard.privacy.keys import SubjectVault
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.storage.orm import consent_events, store_signing_keys
from tests.api.conftest import Api, build_api
from tests.api.test_erasure_e2e import _prepare_stores
from tests.dsr.helpers import OTHER, STORES, SUBJECT, declare_jurisdictions, silo_rows
from tests.storage.databases import BACKENDS, fresh_database

CONTACT = "someone@example.com"
TARGETED = "marketing.advertising.first_party.targeted"


def _sync(api: Api, store: str, settings: Any = None) -> list[dict[str, Any]]:
    api.client.headers.update(api.as_key(f"store_{store}"))
    try:
        return sync_store(api.client, settings or api.env.settings, store)
    finally:
        api.client.headers.pop("Authorization", None)


def _events(api: Api) -> list[Any]:
    log = AuditLog.open(api.env.settings)
    try:
        return [s.event for s in log.iter_events()]
    finally:
        log.close()


def _subject_invoices() -> list[str]:
    """The invoice numbers of the subject's purchases in every store (tests.dsr.helpers)."""
    return [row[0] for i in range(len(STORES)) for row in silo_rows(i) if row[6] == f"{SUBJECT}.0"]


def _scan_database(engine: sa.Engine, needles: dict[str, re.Pattern[str]]) -> list[str]:
    """Every (table.column: needle) where a value of any row holds a needle."""
    meta = sa.MetaData()
    meta.reflect(bind=engine)
    hits = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    text = bytes(value).decode("latin-1") if isinstance(value, (bytes, memoryview)) else str(value)
                    hits += [f"{table.name}.{column}: {name}" for name, pattern in needles.items() if pattern.search(text)]
    return sorted(set(hits))


def _scan_files(root: Path, needles: dict[str, re.Pattern[str]]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        names = [str(path.relative_to(root))]
        if path.is_file():
            names.append(path.read_bytes().decode("latin-1"))
        hits += [f"{path}: {name}" for name, pattern in needles.items() for text in names if pattern.search(text)]
    return sorted(set(hits))


def _first_signature_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's next receipt goes out with a signature that does not verify; later ones are real."""
    calls = {"n": 0}

    def bad_once(keys: Any, receipt: Receipt) -> bytes:
        calls["n"] += 1
        return bytes(64) if calls["n"] == 1 else sign_receipt(keys, receipt)

    monkeypatch.setattr("siloguard.dsr.sync.sign_receipt", bad_once)


def _number(value: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![0-9.]){re.escape(value)}(?![0-9])")


# ---- High ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_finding_01_erasure_leaves_nothing_of_the_subject_in_the_service(tmp_path: Path, backend: str) -> None:
    with fresh_database(backend, tmp_path) as url:
        for api in build_api(tmp_path, url):
            settings, service = api.env.settings, api.app_service()
            _prepare_stores(settings)
            pseudonyms = {s: Pseudonymiser(store_keys(settings, s)).pseudonym(SUBJECT) for s in STORES}
            refs = {s: SubjectVault(store_keys(settings, s)).subject_ref(SUBJECT) for s in STORES}
            digest = service.digest(SUBJECT)

            # What the subject did before: an answered access request, a consent change, a GPC signal.
            access_body = {"kind": "access", "customer_ref": SUBJECT, "contact": CONTACT}
            first = api.client.post("/v1/requests", json=access_body, headers={"Idempotency-Key": "access-1"})
            access_id = first.json()["request"]["id"]
            verified = api.client.post(f"/v1/requests/{access_id}/verify", json={"code": api.code(access_id)})
            token = api.auth(verified.json()["subject_token"])
            api.sync()
            answer = api.client.get(f"/v1/requests/{access_id}/access", headers=token)
            assert answer.status_code == 200 and answer.json()["answer"]["subject"]["customer_number"] == SUBJECT  # names them
            assert api.client.put(f"/v1/consent/{TARGETED}", json={"action": "grant"}, headers=token).status_code == 200
            api.sync()

            erasure = api.submit("erasure", SUBJECT, contact=CONTACT, headers={"Idempotency-Key": "erase-1"})
            api.client.post(f"/v1/requests/{erasure['id']}/verify", json={"code": api.code(erasure["id"])})
            for store in STORES:
                _sync(api, store)
            assert service.get(erasure["id"])["status"] == "completed"

            # The API serves nothing of them any more, to anyone.
            assert api.client.get(f"/v1/requests/{access_id}/access", headers=token).status_code == 410
            officer = api.client.get(f"/v1/requests/{access_id}", headers=api.as_key("dpo"))
            assert officer.status_code == 200 and officer.json()["result"] == {"answer": "deleted"}
            # The requests themselves remain: the controller shows what it did, for nobody.
            assert api.client.get(f"/v1/requests/{erasure['id']}", headers=token).json()["status"] == "completed"

            needles = {"customer id": _number(SUBJECT), "contact": re.compile(re.escape(CONTACT)),
                       "subject digest": re.compile(digest)}
            needles |= {f"pseudonym in {s}": re.compile(re.escape(p)) for s, p in pseudonyms.items()}
            needles |= {f"purchase {n}": _number(n) for n in _subject_invoices()}
            keyed = {f"keyed reference in {s}": re.compile(r) for s, r in refs.items()}
            # Only the stores' suppression records hold the keyed reference; nothing else of them.
            hits = _scan_database(api.engine, needles | keyed)
            assert hits == sorted(f"store_suppressions.subject_ref: keyed reference in {s}" for s in STORES), hits
            assert _scan_files(settings.work_dir, needles | keyed) == []
            assert _scan_files(settings.keys.root, needles | keyed) == []
            if backend == "sqlite":  # nor in the database's own files (free pages, write-ahead log)
                raw = {"contact": re.compile(re.escape(CONTACT))} | {f"pseudonym in {s}": re.compile(re.escape(p)) for s, p in pseudonyms.items()}
                files = [p for p in tmp_path.glob("siloguard.db*")]
                assert files and [f"{p.name}: {n}" for p in files for n, rx in raw.items() if rx.search(p.read_bytes().decode("latin-1"))] == []

            # A replay of the old submission finds nothing of it (it files a new, unrelated request).
            replay = api.client.post("/v1/requests", json=access_body, headers={"Idempotency-Key": "access-1"})
            assert replay.json()["request"]["id"] != access_id and replay.json()["request"]["result"] is None


def test_finding_02_an_idempotency_key_replayed_without_credentials_returns_nothing_of_the_victims(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    victim = {"kind": "access", "customer_ref": SUBJECT, "contact": CONTACT}
    key = {"Idempotency-Key": "order-2211"}
    filed = api.client.post("/v1/requests", json=victim, headers=key).json()["request"]
    # A replay of exactly the same request while it waits for its code: the same request.
    waiting = api.client.post("/v1/requests", json=victim, headers=key)
    assert waiting.status_code == 200 and waiting.json()["request"]["id"] == filed["id"]
    api.client.post(f"/v1/requests/{filed['id']}/verify", json={"code": api.code(filed["id"])})
    api.sync()
    assert api.app_service().get(filed["id"])["status"] == "completed"
    marker = Pseudonymiser(store_keys(api.env.settings, "alpha")).pseudonym(SUBJECT)

    # The attacker knows the customer number and the key, not the victim's whole request.
    guessed = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": SUBJECT}, headers=key)
    assert guessed.status_code == 201 and guessed.json()["request"]["id"] != filed["id"]
    # Even the exact same request does not reach the completed one: it is filed anew.
    replayed = api.client.post("/v1/requests", json=victim, headers=key)
    assert replayed.status_code == 201 and replayed.json()["request"]["id"] != filed["id"]
    assert replayed.json()["request"]["status"] == "verifying" and replayed.json()["verification"] == "code_sent"
    for reply in (waiting, guessed, replayed):
        assert reply.json()["request"]["result"] is None and marker not in reply.text
    # Wrong codes against the attacker's own request cannot touch the victim's.
    for _ in range(api.env.settings.api.code_attempts):
        api.client.post(f"/v1/requests/{guessed.json()['request']['id']}/verify", json={"code": "00000000"})
    assert api.app_service().get(filed["id"])["status"] == "completed"


# ---- Medium -------------------------------------------------------------------------------------


def test_finding_03_officers_never_read_access_answers_in_views_or_listings(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, token = api.verified("access", SUBJECT)
    marker = Pseudonymiser(store_keys(api.env.settings, "alpha")).pseudonym(SUBJECT)
    pointer = {"answer": f"/v1/requests/{request['id']}/access"}
    for caller in ("compliance_officer", "dpo", "api_service", "subject"):
        headers = api.auth(token) if caller == "subject" else api.as_key(caller)
        for path in (f"/v1/requests/{request['id']}", "/v1/requests"):
            reply = api.client.get(path, headers=headers)
            assert marker not in reply.text and '"data"' not in reply.text, (caller, path)
            if reply.status_code == 200:
                views = reply.json()["requests"] if path == "/v1/requests" else [reply.json()]
                mine = [v for v in views if v["id"] == request["id"]]
                assert mine and mine[0]["result"] == pointer, (caller, path)
        if caller != "subject":
            assert api.client.get(f"/v1/requests/{request['id']}/access", headers=headers).status_code in (403, 200)
    assert api.client.get(f"/v1/requests/{request['id']}/access", headers=api.as_key("compliance_officer")).status_code == 403
    stored = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.as_key("dpo"))
    assert stored.status_code == 200 and marker in stored.text  # the stored answer names them (so the checks above could fail)
    own = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(token))
    assert own.status_code == 200 and marker not in own.text and own.json()["answer"]["subject"]["customer_number"] == SUBJECT


def test_finding_04_a_dpo_denial_stops_the_erasure_in_every_store(sqlite_api: Api) -> None:
    api = sqlite_api
    settings, service = api.env.settings, api.app_service()
    _prepare_stores(settings)
    before = {s: api.env.rows_of(s, SUBJECT) for s in STORES}
    request, _ = api.verified("erasure", SUBJECT)
    assert {t["status"] for t in service.tasks(request["id"])} == {"pending"}
    denied = api.client.post(f"/v1/requests/{request['id']}/deny", json={"reason": "manifestly-unfounded"}, headers=api.as_key("dpo"))
    assert denied.status_code == 200 and denied.json()["status"] == "denied"
    assert {t["status"] for t in service.tasks(request["id"])} == {"cancelled"}
    for store in STORES:
        assert _sync(api, store) == []
    assert {s: api.env.rows_of(s, SUBJECT) for s in STORES} == before

    # A receipt for a cancelled task is refused, and the refusal is audited.
    task = next(t for t in service.tasks(request["id"]) if t["store"] == "alpha")
    receipt = Receipt(task=task["id"], request=request["id"], store="alpha", rows_erased=2, rows_remaining=0,
                      embeddings_erased=1, key_destroyed=True, erased_at=datetime.now(timezone.utc).isoformat())
    body = {"receipt": receipt.canonical().decode(),
            "signature": base64.b64encode(sign_receipt(store_keys(settings, "alpha"), receipt)).decode()}
    refused = api.client.post(f"/v1/stores/alpha/tasks/{task['id']}/receipt", json=body, headers=api.as_key("store_alpha"))
    assert refused.status_code == 409 and service.get(request["id"])["status"] == "denied"
    assert any(e.action == "dsr.receipt" and e.decision == "deny" and e.reason == "receipt-refused:request-closed"
               and e.request == request["id"] for e in _events(api))

    # Denied between the store pulling its tasks and erasing: the store asks first, erases nothing.
    second, _ = api.verified("erasure", SUBJECT)

    def deny_after_pull(response: Any) -> None:
        if response.request.method == "GET" and response.request.url.path == "/v1/stores/alpha/tasks":
            service.deny(second["id"], reason="manifestly-unfounded", actor="key:dpo")

    api.client.event_hooks["response"].append(deny_after_pull)
    try:
        done = _sync(api, "alpha")
    finally:
        api.client.event_hooks["response"].remove(deny_after_pull)
    assert [d.get("skipped") for d in done] == ["cancelled"]
    assert api.env.rows_of("alpha", SUBJECT) == before["alpha"]


def test_finding_05_erasure_key_mixups_fail_before_any_data_is_touched(sqlite_api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = sqlite_api
    settings = api.env.settings
    _prepare_stores(settings)
    runner = CliRunner()
    registered = public_key_bytes(store_keys(settings, "alpha"))

    def held() -> bytes:
        with api.engine.connect() as conn:
            return bytes(conn.execute(sa.select(store_signing_keys.c.public_key).where(store_signing_keys.c.store == "alpha")).scalar_one())

    # A store key created where the store's keys are not: an error naming the keys root, no new keys.
    elsewhere = tmp_path / "not-the-store-keys"
    elsewhere.mkdir(mode=0o700)
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", api.env.url)
    monkeypatch.setenv("SILOGUARD_KEYS__ROOT", str(elsewhere))
    made = runner.invoke(cli_app, ["keys", "create", "--role", "store_operator", "--store", "alpha"])
    assert made.exit_code == 2 and str(elsewhere.resolve()) in made.output
    assert not (elsewhere / "stores").exists() and held() == registered

    # A sync with the wrong keys stops before touching the silo.
    wrong = settings.with_overrides(keys={"root": elsewhere})
    store_keys(wrong, "alpha")  # another key set, as a mistyped keys root would have made
    request, _ = api.verified("erasure", SUBJECT)
    with pytest.raises(ConfigError, match="another receipt key"):
        _sync(api, "alpha", wrong)
    assert api.env.rows_of("alpha", SUBJECT) == 2

    # A receipt refused after the rows were erased: audited; the retry reports the original count.
    _first_signature_bad(monkeypatch)
    with pytest.raises(DsrError, match="signature"):
        _sync(api, "alpha")
    assert api.env.rows_of("alpha", SUBJECT) == 0
    assert any(e.action == "dsr.receipt" and e.decision == "deny" and e.reason == "receipt-refused:bad-signature"
               for e in _events(api))
    assert _sync(api, "alpha")[0]["rows_erased"] == 2
    task = next(t for t in api.app_service().tasks(request["id"]) if t["store"] == "alpha")
    assert Receipt.parse(task["receipt"]).rows_erased == 2

    # Rotating a store's receipt key is a flag, and only with it.
    again = runner.invoke(cli_app, ["keys", "create", "--role", "store_operator", "--store", "alpha"])
    assert again.exit_code == 2 and "--rotate-receipt-key" in again.output and held() == registered
    rotated = runner.invoke(cli_app, ["keys", "create", "--role", "store_operator", "--store", "alpha", "--rotate-receipt-key"])
    assert rotated.exit_code == 0 and held() == public_key_bytes(store_keys(wrong, "alpha"))


# ---- Low ----------------------------------------------------------------------------------------


@pytest.fixture
def clocked(tmp_path: Path) -> Any:
    clock = SimpleNamespace(now=datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc))

    def factory(env: Any, engine: Any) -> DsrService:
        return DsrService(env.settings, engine, AuditLog.open(env.settings), clock=lambda: clock.now)

    with fresh_database("sqlite", tmp_path) as url:
        for api in build_api(tmp_path, url, service_factory=factory):
            yield api, clock


def test_finding_07_unverified_requests_expire_and_leave_the_deadline_counts(clocked: Any) -> None:
    api, clock = clocked
    service = api.app_service()
    request = api.submit("erasure", SUBJECT, contact=CONTACT)
    assert service.get(request["id"])["status"] == "verifying" and read_outbox(api.engine, request["id"])
    clock.now += timedelta(seconds=api.env.settings.api.code_ttl_seconds + 1)
    service.resume()
    row = service.get(request["id"])
    assert row["status"] == "unverified" and row["customer_ref"] is None and row["contact"] is None
    assert read_outbox(api.engine, request["id"]) == []
    assert any(e.action == "dsr.unverified" and e.reason == "code-expired" for e in _events(api))
    clock.now += timedelta(days=90)  # long past the request's legal deadline
    outcome = request_deadlines(SimpleNamespace(engine=api.engine, now=clock.now), "all")
    assert outcome.status == "passed" and outcome.counts["requests_open"] == 0


def test_finding_08_the_officers_list_pages_with_a_cursor_and_a_total(sqlite_api: Api) -> None:
    api = sqlite_api
    filed = {api.submit("access", str(13000 + n))["id"] for n in range(7)}
    seen: list[str] = []
    url: str | None = "/v1/requests?limit=3"
    pages = 0
    while url is not None:
        page = api.client.get(url, headers=api.as_key("compliance_officer")).json()
        assert page["total"] == len(filed) and len(page["requests"]) <= 3
        seen += [r["id"] for r in page["requests"]]
        if pages == 0:  # filed while the officer pages through: counted, and on a later page
            late = api.submit("access", "14999")["id"]
            filed.add(late)
        url, pages = page["next"], pages + 1
    assert len(seen) == len(set(seen)) and set(seen) == filed and pages == 3
    assert api.client.get("/v1/requests?cursor=bm90LWEtY3Vyc29y", headers=api.as_key("dpo")).status_code == 404


def test_finding_09_an_unverified_caller_cannot_opt_out_a_gdpr_stores_customer(api: Api) -> None:
    def consent_rows() -> int:
        with api.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one())

    before = consent_rows()
    api.submit("access", SUBJECT, headers={"Sec-GPC": "1"})  # anyone can name a customer
    assert consent_rows() == before
    claimed = api.client.post("/v1/requests", json={"kind": "opt_out", "customer_ref": SUBJECT, "jurisdiction": "ccpa"})
    assert claimed.status_code == 422 and "jurisdiction" in claimed.json()["error"]["message"]
    opt_out = api.submit("opt_out", SUBJECT)  # GDPR stores: an objection is verified first
    assert opt_out["jurisdiction"] == "gdpr" and opt_out["status"] == "verifying" and consent_rows() == before

    declare_jurisdictions(api.env, dict.fromkeys(STORES, "ccpa"))
    ccpa = api.submit("opt_out", OTHER)
    assert ccpa["jurisdiction"] == "ccpa" and ccpa["status"] == "in_progress"  # verified, a task per store
    api.sync()
    assert api.app_service().get(ccpa["id"])["status"] == "completed"
    transitions = api.app_service().transitions(ccpa["id"])
    assert [t["reason"] for t in transitions if t["to_status"] == "verified"] == ["unverified-ccpa-opt-out"]
    assert any(e.action == "dsr.verified" and e.reason == "unverified-ccpa-opt-out" and e.request == ccpa["id"] for e in _events(api))


def test_finding_12_an_unknown_and_an_existing_request_id_answer_alike_to_anonymous_callers(sqlite_api: Api) -> None:
    api = sqlite_api
    real = api.submit("access", SUBJECT)["id"]
    unknown = "dsr-00000000-0000-4000-8000-000000000000"
    for suffix in ("", "/access"):
        a = api.client.get(f"/v1/requests/{real}{suffix}")
        b = api.client.get(f"/v1/requests/{unknown}{suffix}")
        assert a.status_code == b.status_code == 401 and a.json() == b.json()


def test_finding_12_the_server_log_does_not_say_where_a_subject_shops(sqlite_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    caplog.set_level(logging.INFO)
    api.verified("access", SUBJECT)  # (the stores' own sync runs here too: its HTTP client logs are the store's)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and not r.name.startswith(("httpx", "httpcore"))]
    assert not [line for line in lines if "rows" in line or any(store in line for store in STORES)], lines


# ---- found by a review of the fixes above (each failed on the fixes' first version) ----------------


def _receipt(api: Api, store: str, request_id: str) -> None:
    """The store erases the subject for its task of ``request_id`` and posts its receipt (service calls)."""
    from siloguard.dsr.sync import erase_subject

    service = api.app_service()
    task = next(t for t in service.tasks(request_id) if t["store"] == store)
    outcome = erase_subject(api.env.settings, store, SUBJECT, task=task["id"], request=request_id)
    receipt = Receipt(task=task["id"], request=request_id, store=store, rows_erased=outcome.rows_erased,
                      rows_remaining=outcome.rows_remaining, embeddings_erased=outcome.embeddings_erased,
                      key_destroyed=outcome.key_destroyed, erased_at=datetime.now(timezone.utc).isoformat())
    service.post_receipt(store, task["id"], receipt.canonical().decode(), sign_receipt(store_keys(api.env.settings, store), receipt),
                         actor=f"key:{store}")


def test_review_an_access_answer_built_while_the_erasure_completes_is_not_kept(sqlite_api: Api) -> None:
    # The last store does its erasure and then, in the same sync, its part of an access answer
    # filed meanwhile: the erasure completes first, so the part is refused and never kept.
    api = sqlite_api
    _prepare_stores(api.env.settings)
    marker = Pseudonymiser(store_keys(api.env.settings, "gamma")).pseudonym(SUBJECT)
    erasure, _ = api.verified("erasure", SUBJECT)
    for store in ("alpha", "beta"):
        _sync(api, store)
    access, token = api.verified("access", SUBJECT, sync=False)
    with pytest.raises(DsrError, match="no longer wanted"):
        _sync(api, "gamma")
    service = api.app_service()
    assert service.get(erasure["id"])["status"] == "completed"
    row = service.get(access["id"])
    assert row["status"] == "failed" and marker not in (row["result"] or "")
    assert api.client.get(f"/v1/requests/{access['id']}/access", headers=api.auth(token)).status_code in (401, 409, 410)
    assert _scan_database(api.engine, {"pseudonym": re.compile(re.escape(marker))}) == []


def test_review_consent_and_gpc_are_not_recorded_while_stores_erase_the_subject(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    erasure, token = api.verified("erasure", SUBJECT)
    _sync(api, "alpha")
    put = api.client.put(f"/v1/consent/{TARGETED}", json={"action": "grant"}, headers=api.auth(token))
    assert put.status_code == 409 and "erased" in put.json()["error"]["message"]
    api.client.get("/v1/consent", headers={**api.auth(token), "Sec-GPC": "1"})
    ref = SubjectVault(store_keys(api.env.settings, "alpha")).subject_ref(SUBJECT)
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(consent_events).where(consent_events.c.subject == ref)).all() == []
    for store in ("beta", "gamma"):
        _sync(api, store)
    assert api.app_service().get(erasure["id"])["status"] == "completed"


def test_review_the_subjects_other_requests_end_with_the_erasure(sqlite_api: Api) -> None:
    api = sqlite_api
    service = api.app_service()
    _prepare_stores(api.env.settings)
    pending = api.submit("access", SUBJECT)  # never verified
    first, _ = api.verified("erasure", SUBJECT)
    second, _ = api.verified("erasure", SUBJECT)
    done = [item for store in STORES for item in _sync(api, store)]
    assert service.get(first["id"])["status"] == "completed"
    assert service.get(second["id"])["status"] == "completed"  # done by the first
    assert service.get(pending["id"])["status"] == "unverified"
    assert all(t["status"] in ("done", "cancelled") for r in (first, second) for t in service.tasks(r["id"]))
    assert all(item.get("rows_erased", 0) >= 0 for item in done)
    erased = SubjectVault(store_keys(api.env.settings, "alpha"))
    from siloguard.clients.gating import store_suppression

    assert store_suppression(api.env.settings, "alpha").suppressed(["None"]) == set()
    assert len(store_suppression(api.env.settings, "alpha")) == 1 and not erased.has_key(SUBJECT)


def test_review_an_access_gate_after_the_erasure_does_not_recreate_the_subjects_key(sqlite_api: Api, tmp_path: Path) -> None:
    import pandas as pd

    from siloguard.data.loader import load_clean
    from siloguard.clients.access import _gate
    from siloguard.policies.gate import Principal
    from tests.dsr.helpers import HEADER

    api = sqlite_api
    _prepare_stores(api.env.settings)
    # The subject's rows as an access answer read them just before the store erased them.
    late = tmp_path / "read-before-erasure.csv"
    pd.DataFrame([r for r in silo_rows(0) if r[6] == f"{SUBJECT}.0"], columns=HEADER).to_csv(late, index=False)
    rows, _ = load_clean(late)
    api.verified("erasure", SUBJECT)
    for store in STORES:
        _sync(api, store)
    keys = store_keys(api.env.settings, "alpha")
    assert not SubjectVault(keys).has_key(SUBJECT)
    recorder_before = len(_events(api))
    gated = _gate(api.env.settings, "alpha").admit(Principal(f"subject:{SUBJECT}", "data_subject"), "essential.legal_obligation",
                                                   "transactions", rows, action="export")
    assert gated.rows_out == 0  # erased: nothing passes
    assert not SubjectVault(keys).has_key(SUBJECT)  # and the destroyed key stays destroyed
    assert _events(api)[recorder_before:][-1].actor == "subject:unidentified"


def test_review_a_claimed_task_cannot_be_denied_and_a_refused_receipt_does_not_stop_the_others(sqlite_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = sqlite_api
    service = api.app_service()
    _prepare_stores(api.env.settings)
    request, _ = api.verified("erasure", SUBJECT)
    task = next(t for t in service.tasks(request["id"]) if t["store"] == "alpha")
    claimed = api.client.post(f"/v1/stores/alpha/tasks/{task['id']}/claim", headers=api.as_key("store_alpha"))
    assert claimed.status_code == 200 and claimed.json()["status"] == "claimed"
    refused = api.client.post(f"/v1/requests/{request['id']}/deny", json={"reason": "manifestly-unfounded"}, headers=api.as_key("dpo"))
    assert refused.status_code == 409 and "alpha" in refused.json()["error"]["message"]

    other, _ = api.verified("erasure", OTHER)  # alpha now has two tasks: the first receipt is refused
    _first_signature_bad(monkeypatch)
    with pytest.raises(DsrError, match="1 task\(s\) not finished"):
        _sync(api, "alpha")
    assert {t["status"] for r in (request, other) for t in service.tasks(r["id"]) if t["store"] == "alpha"} == {"claimed", "done"}
    assert api.env.rows_of("alpha", SUBJECT) == 0 and api.env.rows_of("alpha", OTHER) == 0


def test_review_an_anonymous_replay_shows_the_first_deadline_and_an_ended_request_is_filed_anew(clocked: Any) -> None:
    api, clock = clocked
    body = {"kind": "erasure", "customer_ref": SUBJECT}
    key = {"Idempotency-Key": "form-1"}
    first = api.client.post("/v1/requests", json=body, headers=key).json()["request"]
    api.client.post(f"/v1/requests/{first['id']}/verify", json={"code": api.code(first["id"])})
    extended = api.client.post(f"/v1/requests/{first['id']}/extend", json={"reason": "complexity", "explanation": "many stores"},
                               headers=api.as_key("dpo"))
    assert extended.status_code == 200 and extended.json()["extended"] is True
    assert extended.json()["result"]["extension"]["explanation"] == "many stores"
    replay = api.client.post("/v1/requests", json=body, headers=key).json()["request"]
    assert replay["id"] == first["id"] and replay["extended"] is False and replay["due_at"] == first["due_at"]

    late = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": OTHER}, headers=key).json()["request"]
    clock.now += timedelta(seconds=api.env.settings.api.code_ttl_seconds + 1)
    api.app_service().resume()
    again = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": OTHER}, headers=key)
    assert again.status_code == 201 and again.json()["request"]["id"] != late["id"]
    assert again.json()["verification"] == "code_sent"


def test_review_small_ones_cursor_overflow_store_keys_on_request_ids_reason_codes(sqlite_api: Api) -> None:
    api = sqlite_api
    cursor = base64.urlsafe_b64encode(b'["9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-23:59", "x"]').decode().rstrip("=")
    assert api.client.get(f"/v1/requests?cursor={cursor}", headers=api.as_key("dpo")).status_code == 404
    real = api.submit("access", SUBJECT)["id"]
    unknown = "dsr-00000000-0000-4000-8000-000000000000"
    a = api.client.get(f"/v1/requests/{real}", headers=api.as_key("store_alpha"))
    b = api.client.get(f"/v1/requests/{unknown}", headers=api.as_key("store_alpha"))
    assert a.status_code == b.status_code == 403 and a.json() == b.json()
    bad = api.client.post(f"/v1/requests/{real}/deny", json={"reason": "ticket-20261201"}, headers=api.as_key("dpo"))
    assert bad.status_code == 422
    ok = api.client.post(f"/v1/requests/{real}/deny", json={"reason": "ticket-2026", "explanation": "asked twice"},
                         headers=api.as_key("dpo"))
    assert ok.status_code == 200 and ok.json()["result"] == {"denied": "ticket-2026", "explanation": "asked twice"}


# ---- found by a second review (each failed before its fix) ----------------------------------------


def test_review2_a_partly_erased_request_cannot_be_denied(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, _ = api.verified("erasure", SUBJECT)
    _sync(api, "alpha")
    reply = api.client.post(f"/v1/requests/{request['id']}/deny", json={"reason": "manifestly-unfounded"}, headers=api.as_key("dpo"))
    assert reply.status_code == 409 and "already erased" in reply.json()["error"]["message"]
    for store in ("beta", "gamma"):
        _sync(api, store)
    assert api.app_service().get(request["id"])["status"] == "completed"


def test_review2_claiming_again_does_not_extend_the_lease(clocked: Any) -> None:
    api, clock = clocked
    service = api.app_service()
    request, _ = api.verified("erasure", SUBJECT)
    task = next(t for t in service.tasks(request["id"]) if t["store"] == "alpha")
    lease = timedelta(seconds=api.env.settings.api.claim_lease_seconds)
    for _ in range(3):  # a store re-claiming just before each lapse
        assert service.claim_task("alpha", task["id"])["status"] == "claimed"
        clock.now += lease * 0.9
    denied = api.client.post(f"/v1/requests/{request['id']}/deny", json={"reason": "manifestly-unfounded"}, headers=api.as_key("dpo"))
    assert denied.status_code == 200 and denied.json()["status"] == "denied"


def test_review2_a_download_is_taken_once_even_when_two_race(sqlite_api: Api) -> None:
    import threading

    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, _ = api.verified("access", SUBJECT)
    service, got = api.app_service(), []
    start = threading.Barrier(2)

    def take() -> None:
        start.wait()
        got.append(service.take_answer(request["id"]))

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a is None for a in got) == [False, True]


def test_review2_codes_sessions_and_effects_do_not_outlive_their_use(clocked: Any) -> None:
    api, clock = clocked
    service = api.app_service()
    for store in STORES:  # an erasure under way; a consent request verified meanwhile records nothing
        from siloguard.clients.gating import store_consent

        store_consent(api.env.settings, store).record([SUBJECT], TARGETED, "withdraw", source="web")
    erasure, _ = api.verified("erasure", SUBJECT)
    assert read_outbox(api.engine, erasure["id"]) == []  # the code's message goes at verification

    def subject_events() -> int:
        with api.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(consent_events)).scalar_one())

    before = subject_events()
    consent, token = api.verified("consent", SUBJECT, sync=False, consent=[{"purpose": TARGETED, "action": "grant"}],
                                  headers={"Sec-GPC": "1"})
    assert service.tasks(consent["id"]) == [] and service.get(consent["id"])["status"] == "completed"  # nothing filed
    assert subject_events() == before
    clock.now += timedelta(seconds=api.env.settings.api.session_ttl_seconds + 1)
    service.resume()
    with api.engine.connect() as conn:
        from siloguard.storage.orm import dsr_sessions

        assert conn.execute(sa.select(sa.func.count()).select_from(dsr_sessions)).scalar_one() == 0


def test_review2_a_malformed_receipt_and_a_dpos_read_of_an_answer_are_audited(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, _ = api.verified("erasure", SUBJECT)
    task = next(t for t in api.app_service().tasks(request["id"]) if t["store"] == "alpha")
    reply = api.client.post(f"/v1/stores/alpha/tasks/{task['id']}/receipt", json={"receipt": "{}", "signature": "!!!!"},
                            headers=api.as_key("store_alpha"))
    assert reply.status_code == 422
    assert any(e.action == "dsr.receipt" and e.reason == "receipt-refused:malformed" and e.request == request["id"] for e in _events(api))
    access, _ = api.verified("access", OTHER)
    assert api.client.get(f"/v1/requests/{access['id']}/access", headers=api.as_key("dpo")).status_code == 200
    assert any(e.action == "dsr.answer_read" and e.request == access["id"] and e.actor.startswith("key:") for e in _events(api))


# ---- found by a review of the store tasks (each failed on the first version of the tasks) --------


def _done(api: Api, store: str, task_id: str, answer: Any) -> Any:
    body = {"answer": answer if isinstance(answer, str) else __import__("json").dumps(answer)}
    return api.client.post(f"/v1/stores/{store}/tasks/{task_id}/done", json=body, headers=api.as_key(f"store_{store}"))


def _task(api: Api, request_id: str, store: str) -> str:
    return next(t["id"] for t in api.app_service().tasks(request_id) if t["store"] == store)


def test_review3_a_malformed_access_part_is_refused_and_cannot_wedge_the_request_or_the_sweep(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, token = api.verified("access", SUBJECT, sync=False)
    alpha = _task(api, request["id"], "alpha")
    entry = {"store": "alpha", "dataset": "transactions", "categories": [], "data": []}
    for bad in ({"part": {"stores": [entry | {"records": "lots"}]}}, {"part": {"stores": [entry | {"records": 1e999}]}},
                {"part": {"stores": [entry | {"records": 3}]}},  # claims records it does not hold
                {"part": {"stores": [entry | {"store": "beta", "records": 0}]}}, "[" * 100_000):
        reply = _done(api, "alpha", alpha, bad)
        assert reply.status_code == 422, reply.text
    api.sync()  # every store answers properly: the request completes
    assert api.app_service().get(request["id"])["status"] == "completed"
    assert api.app_service().resume() >= 0  # the sweep runs through
    refused = [e for e in _events(api) if e.action == "dsr.task_done" and e.decision == "deny"]
    assert len(refused) == 5 and {e.store for e in refused} == {"alpha"}


def test_review3_a_store_cannot_set_what_every_answer_says_about_purposes_retention_and_recipients(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, token = api.verified("access", SUBJECT, sync=False)
    forged = {"part": {"stores": [{"store": "alpha", "dataset": "transactions", "records": 0, "categories": [], "data": []}],
                       "retention": "forever", "recipients": ["anyone"], "purposes": []}}
    assert _done(api, "alpha", _task(api, request["id"], "alpha"), forged).status_code == 200
    api.sync("beta", "gamma")
    answer = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(token)).json()["answer"]
    assert answer["retention"] == "P6Y" and "anyone" not in answer["recipients"] and answer["purposes"]


def test_review3_a_sealed_part_must_look_sealed_and_a_part_naming_another_store_does_not_open(sqlite_api: Api) -> None:
    from siloguard.dsr.errors import DsrInvalid
    from siloguard.dsr.sealed import new_key_pair, open_parts, part_id, public_key_from_text, seal_answer

    api = sqlite_api
    _prepare_stores(api.env.settings)
    private, public = new_key_pair()
    request = api.submit("access", SUBJECT, answer_key=public)
    api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"])})
    assert _done(api, "alpha", _task(api, request["id"], "alpha"), {"sealed": {"junk": 1}}).status_code == 422
    # A store seals a part that claims another store's records: the subject's open says so.
    planted = seal_answer(public_key_from_text(public), {"stores": [{"store": "gamma", "records": 99}], "records": 99},
                          part_id(request["id"], "alpha"))
    with pytest.raises(DsrInvalid, match="alpha"):
        open_parts(private, [{"store": "alpha", "sealed": planted}], request["id"])


def test_review3_unauthenticated_callers_get_the_small_body_limit_on_the_answer_route(sqlite_api: Api) -> None:
    api = sqlite_api
    big = {"answer": "x" * 1_000_000}
    path = "/v1/stores/alpha/tasks/task-00000000-0000-4000-8000-000000000000/done"
    assert api.client.post(path, json=big).status_code == 413
    assert api.client.post(path, json=big, headers={"Authorization": "Bearer sgs_notakey"}).status_code == 413
    assert api.client.post(path, json=big, headers=api.as_key("store_alpha")).status_code == 404  # read, then: no such task


def test_review3_a_request_that_ends_keeps_no_part_and_an_access_request_can_be_denied_after_a_part(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, _ = api.verified("access", SUBJECT, sync=False)
    api.sync("alpha")
    held = [t for t in api.app_service().tasks(request["id"]) if t["answer"]]
    assert len(held) == 1
    denied = api.client.post(f"/v1/requests/{request['id']}/deny", json={"reason": "manifestly-unfounded"}, headers=api.as_key("dpo"))
    assert denied.status_code == 200, denied.text
    assert [t for t in api.app_service().tasks(request["id"]) if t["answer"]] == []


def test_review3_gpc_after_a_later_grant_opts_out_again_and_consent_changes_are_bounded(sqlite_api: Api) -> None:
    from siloguard.dsr.effects import MAX_WAITING_CHANGES

    api = sqlite_api
    _prepare_stores(api.env.settings)
    _, token = api.verified("access", SUBJECT)
    gpc = {**api.auth(token), "Sec-GPC": "1"}
    sharing = "third_party_sharing"

    def state() -> set[tuple[bool | None, bool]]:
        stores = api.client.get("/v1/consent", headers=api.auth(token)).json()["stores"]
        return {(p["consented"], p["applied"]) for s in stores for p in s["purposes"] if p["purpose"] == sharing}

    api.client.get("/v1/consent", headers=gpc)
    api.sync()
    assert state() == {(False, True)}
    api.client.put(f"/v1/consent/{sharing}", json={"action": "grant"}, headers=api.auth(token))
    api.sync()
    assert state() == {(True, True)}
    api.client.get("/v1/consent", headers=gpc)  # the signal counts again after the grant
    api.sync()
    assert state() == {(False, True)}
    before = len(api.app_service().list(subject_digest=api.app_service().digest(SUBJECT)))
    api.client.get("/v1/consent", headers=gpc)  # already opted out: nothing new is filed
    assert len(api.app_service().list(subject_digest=api.app_service().digest(SUBJECT))) == before
    codes = [api.client.put(f"/v1/consent/{sharing}", json={"action": "grant"}, headers=api.auth(token)).status_code
             for _ in range(MAX_WAITING_CHANGES + 2)]
    assert codes.count(200) == MAX_WAITING_CHANGES and codes[-1] == 409
