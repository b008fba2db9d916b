"""The compliance officer's report: facts, schema, refusal on a bad log, and Chromium rendering."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.audit import vocabulary as v
from siloguard.audit.events import AuditEvent
from siloguard.audit.log import AuditLog
from siloguard.audit.report import build_report, report_schema, validate_facts, write_report
from siloguard.errors import AuditError, AuditIntegrityError
from siloguard.storage import create_engine, upgrade_database
from tests.audit.helpers import Keys, gate_event

T0 = datetime(2026, 1, 31, 10, 0, tzinfo=timezone.utc)
CHROMIUM = "/usr/bin/chromium"


def _at(days: float) -> datetime:
    return T0 + timedelta(days=days)


def _compliance_events() -> list[AuditEvent]:
    """One of each kind the report reads (the gate, ledger and API will write these)."""
    events = [gate_event(i) for i in range(12)]
    events += [
        AuditEvent(actor="svc:gate", action=v.CONSENT_COVERAGE, resource="silo:france/transactions", purpose="recommendation",
                   counts={"subjects": 200, "consented": 150}, store="france", time=_at(0)),
        AuditEvent(actor="svc:gate", action=v.CONSENT_COVERAGE, resource="silo:france/transactions", purpose="recommendation",
                   counts={"subjects": 200, "consented": 160}, store="france", time=_at(1)),  # the latest counts
        AuditEvent(actor="svc:gate", action=v.CONSENT_COVERAGE, resource="silo:germany/transactions", purpose="analytics",
                   counts={"subjects": 0, "consented": 0}, store="germany", time=_at(1)),
    ]
    for rnd in range(3):
        for store, eps in (("france", 400_000), ("germany", 250_000)):
            events.append(AuditEvent(actor="svc:federation", action=v.PRIVACY_SPEND, resource="model:global",
                                     purpose="recommendation", counts={"epsilon_e6": eps}, round=rnd, store=store, time=_at(rnd)))
    dsr = [  # (request, regulation, received day, completed day or None)
        ("req-gdpr-on-time", "gdpr", 0, 20), ("req-gdpr-late", "gdpr", 0, 29), ("req-gdpr-open", "gdpr", 20, None),
        ("req-ccpa-overdue", "ccpa", 0, None), ("req-no-clock", None, 1, None),
    ]
    for request, regulation, received, completed in dsr:
        events.append(AuditEvent(actor="svc:api", action=v.DSR_RECEIVED, resource="dsr:erasure", purpose="compliance",
                                 reason=regulation, request=request, time=_at(received)))
        if completed is not None:
            events.append(AuditEvent(actor="svc:api", action=v.DSR_COMPLETED, resource="dsr:erasure", purpose="compliance",
                                     request=request, time=_at(completed)))
    events += [
        AuditEvent(actor="officer:compliance", action=v.CHECK_RESULT, resource="check:gdpr-art30-records", purpose="compliance",
                   decision="deny", reason="missing-processor", time=_at(2)),
        AuditEvent(actor="officer:compliance", action=v.CHECK_RESULT, resource="check:gdpr-art30-records", purpose="compliance",
                   decision="allow", reason="complete", time=_at(3)),
    ]
    return events


def _report_for(log: AuditLog, keys: Keys, events: list[AuditEvent], *, clock_days: float) -> Any:
    log.append(events)
    AuditLog(log.engine, signer=keys.signer, clock=lambda: _at(clock_days).timestamp()).sign_head()
    return build_report(log, keys.public_key)


def _witnessed_events(keys: Keys) -> list[AuditEvent]:
    """A store's two signed heads as the coordinator witnessed them, and one it refused."""
    from siloguard.audit.witness import public_key_text, witness

    heads = [keys.signer.sign(seq=n, tree_size=10 * (n + 1), root_hash=bytes([n]) * 32, timestamp_ms=int(_at(n).timestamp() * 1000))
             for n in range(2)]
    first, e1 = witness("store-31782", heads[0].to_json(), public_key_text(keys.public_key), [], server_round=1)
    _, e2 = witness("store-31782", heads[1].to_json(), public_key_text(keys.public_key), [first.head], server_round=2)
    _, e3 = witness("store-31782", heads[0].to_json(), public_key_text(keys.public_key), [first.head, heads[1]], server_round=3)
    return [e1, e2, e3]


def test_report_facts_follow_from_the_events(audit_log: AuditLog, keys: Keys) -> None:
    facts = _report_for(audit_log, keys, _compliance_events() + _witnessed_events(keys), clock_days=46).facts
    jsonschema.validate(facts, report_schema())
    assert facts["witnessed_heads"]["rows"] == [{
        "store": "store-31782", "seq": 1, "tree_size": 20, "round": 2, "signed": "2026-02-01T10:00:00Z",
        "recorded": facts["witnessed_heads"]["rows"][0]["recorded"], "witnessed": 2, "refused": 1, "last_refusal": "log-went-back",
    }]
    assert facts["events_by_type"]["total"] == facts["tree_head"]["tree_size"] == 12 + 3 + 6 + 7 + 2 + 3
    by_action = {a["action"]: a["total"] for a in facts["events_by_type"]["actions"]}
    assert by_action["gate.train"] == 12 and by_action[v.PRIVACY_SPEND] == 6
    gate = facts["gate_decisions"]
    assert sum(r["allow"] + r["deny"] for r in gate["by_principal_purpose"]) == 12  # check results are not gate decisions
    assert sum(r["count"] for r in gate["denials_by_reason"]) == sum(r["deny"] for r in gate["by_principal_purpose"])
    assert facts["consent_coverage"]["rows"] == [
        {"store": "france", "purpose": "recommendation", "subjects": 200, "consented": 160, "coverage": 0.8},
        {"store": "germany", "purpose": "analytics", "subjects": 0, "consented": 0, "coverage": None},
    ]
    budget = {s["store"]: s for s in facts["privacy_budget"]["stores"]}
    assert [r["cumulative_epsilon_e6"] for r in budget["france"]["rounds"]] == [400_000, 800_000, 1_200_000]
    assert budget["germany"]["total_epsilon_e6"] == 750_000
    dsr = {r["request"]: r for r in facts["data_subject_requests"]["rows"]}
    assert dsr["req-gdpr-on-time"]["due"] == "2026-02-28T10:00:00Z"  # one month from 31 January
    assert dsr["req-gdpr-on-time"]["state"] == "completed on time"
    assert dsr["req-gdpr-late"]["state"] == "completed late"  # 1 March > 28 February
    assert dsr["req-gdpr-open"]["state"] == "open"  # due 20 March, report as of 18 March
    assert dsr["req-ccpa-overdue"]["due"] == "2026-03-17T10:00:00Z" and dsr["req-ccpa-overdue"]["state"] == "overdue"
    assert dsr["req-no-clock"]["state"] == "no legal clock (regulation not recorded)"
    assert facts["checks"]["rows"] == [
        {"check": "gdpr-art30-records", "result": "passed", "reason": "complete", "time": "2026-02-03T10:00:00.000000Z",
         "counts": {}, "clock": "the wall clock when the check ran"}
    ]
    assert facts["plots"] == ["events_by_type", "gate_decisions", "privacy_budget"]


def test_sections_without_events_say_no_data_yet(audit_log: AuditLog, keys: Keys, tmp_path: Path) -> None:
    report = _report_for(audit_log, keys, [gate_event(i) for i in range(5)], clock_days=1)
    for section in ("consent_coverage", "privacy_budget", "data_subject_requests", "checks", "witnessed_heads"):
        assert report.facts[section]["status"] == "no data yet"
    assert report.facts["plots"] == ["events_by_type", "gate_decisions"]
    html_path, json_path = write_report(report, tmp_path / "out")
    html = html_path.read_text()
    assert html.count("No data yet") == 5
    assert report.facts["tree_head"]["root_hash_hex"] in html
    validate_facts(__import__("json").loads(json_path.read_text()))


def test_report_refuses_a_log_that_fails_verification_and_writes_nothing(
    audit_log: AuditLog, keys: Keys, migrated_engine: Engine, tmp_path: Path
) -> None:
    audit_log.append([gate_event(i) for i in range(6)])
    with pytest.raises(AuditError, match="no signed tree head yet|nothing vouches"):
        build_report(audit_log, keys.public_key)
    audit_log.sign_head()
    with migrated_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 2"))
    with pytest.raises(AuditIntegrityError):
        build_report(audit_log, keys.public_key)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("path", "value"),
    [(("checks", "status"), "maybe"), (("tree_head", "root_hash_hex"), "xyz"), (("plots",), ["pie"]),
     (("log", "verified"), False), (("data_subject_requests", "rows"), [{"request": "r"}])],
)
def test_schema_catches_facts_that_are_wrong(audit_log: AuditLog, keys: Keys, path: tuple[str, ...], value: Any) -> None:
    facts = copy.deepcopy(_report_for(audit_log, keys, [gate_event(0)], clock_days=1).facts)
    target = facts
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(AuditError, match="do not match the report schema"):
        validate_facts(facts)


def _chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={user_data}", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )


@pytest.mark.skipif(not Path(CHROMIUM).exists() and shutil.which("chromium") is None and not os.environ.get("CI"),
                    reason="no chromium binary on this machine (CI installs it: there this test runs)")
def test_report_opens_in_headless_chromium_with_the_tree_head_and_the_plots(keys: Keys, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'report.db'}")  # the browser does not care which database
    upgrade_database(engine)
    try:
        log = AuditLog(engine, signer=keys.signer, head_every_events=0, head_every_seconds=0)
        report = _report_for(log, keys, _compliance_events(), clock_days=46)
    finally:
        engine.dispose()
    html_path, _ = write_report(report, tmp_path / "report")
    url = html_path.resolve().as_uri()
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2000", url, user_data=tmp_path / "chrome-1")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = _chromium("--dump-dom", url, user_data=tmp_path / "chrome-2").stdout
    root = report.facts["tree_head"]["root_hash_hex"]
    assert re.search(rf'id="root-hex"[^>]*>{root}<', dom)
    assert 'data-plots="3"' in dom and 'data-plots-rendered="3"' in dom  # all three PNGs decoded


def test_the_report_shows_the_apis_deadlines_ended_requests_and_a_summary_first(audit_log: AuditLog, keys: Keys) -> None:
    from siloguard.dsr.clocks import clock_for

    received = _at(0)
    due = clock_for("ccpa", "opt_out", received).due_at  # 15 business days: no plain day count gives it
    events = [gate_event(i) for i in range(3)] + [
        AuditEvent(actor="svc:api", action=v.DSR_RECEIVED, resource="dsr:opt_out", purpose="compliance", reason="ccpa",
                   request="req-opt-out", counts={"due_epoch_s": int(due.timestamp())}, time=received),
        AuditEvent(actor="svc:api", action=v.DSR_RECEIVED, resource="dsr:access", purpose="compliance", reason="gdpr",
                   request="req-never-verified", time=received),
        AuditEvent(actor="svc:api", action="dsr.unverified", resource="dsr:access", purpose="compliance", reason="code-expired",
                   request="req-never-verified", time=_at(1)),
    ]
    report = _report_for(audit_log, keys, events, clock_days=2)
    rows = {r["request"]: r for r in report.facts["data_subject_requests"]["rows"]}
    assert rows["req-opt-out"]["due"] == due.strftime("%Y-%m-%dT%H:%M:%SZ") and rows["req-opt-out"]["state"] == "open"
    assert rows["req-never-verified"]["state"] == "closed unverified"
    summary = report.facts["summary"]
    assert summary["requests_open"] == 1 and summary["requests_overdue"] == 0
    assert summary["next_due"] == rows["req-opt-out"]["due"] and 0 < summary["next_due_days_left"] < 30
    assert summary["denials"] == sum(r["count"] for r in report.facts["gate_decisions"]["denials_by_reason"])
    assert report.html.index('id="summary"') < report.html.index("Events by type over time")


def test_the_budget_table_explains_epsilon_in_plain_words_and_prints_well(audit_log: AuditLog, keys: Keys) -> None:
    report = _report_for(audit_log, keys, _compliance_events(), clock_days=46)
    html = report.html
    assert "1.20" in html and "3.3 times as likely" in html  # france: epsilon 1.2, e^1.2 = 3.32
    assert "0.75" in html and "2.1 times as likely" in html  # germany: epsilon 0.75, e^0.75 = 2.12
    assert "1.200000" not in html  # no false precision
    assert "@media print" in html


def test_the_report_shows_incidents_with_their_clocks_receipts_per_store_caps_and_the_check_clock(
    audit_log: AuditLog, keys: Keys
) -> None:
    aware = _at(0)
    authority_due, subjects_due = aware + timedelta(hours=72), aware + timedelta(hours=72)
    dues = {"authority_gdpr_due_epoch_s": int(authority_due.timestamp()), "subjects_gdpr_due_epoch_s": int(subjects_due.timestamp())}
    events = [gate_event(i) for i in range(2)] + [
        AuditEvent(actor="officer:ana", action="incident.opened", resource="incident:inc-2026-01-31-abcdef", purpose="essential.legal_obligation",
                   reason="confidentiality-high", counts={"subjects": 40, "records": 300, "stores": 2, **dues}, time=aware),
        AuditEvent(actor="officer:ana", action="incident.notified", resource="incident:inc-2026-01-31-abcdef", purpose="essential.legal_obligation",
                   reason="authority", counts={"subjects": 40, "records": 300, "stores": 2, **dues,
                                               "notified_epoch_s": int(_at(1).timestamp())}, time=_at(3.5)),  # recorded later
        AuditEvent(actor="svc:api", action=v.DSR_RECEIPT, resource="dsr:erasure", purpose="compliance", request="req-erase-one",
                   store="france", time=_at(1)),
        AuditEvent(actor="svc:api", action=v.DSR_RECEIPT, resource="dsr:erasure", purpose="compliance", request="req-erase-two",
                   store="france", time=_at(2)),
        AuditEvent(actor="store:germany", action=v.PRIVACY_SPEND, resource="model:global", purpose="recommendation", round=1,
                   store="germany", counts={"epsilon_e6": 7_300_000, "epsilon_cap_e6": 8_000_000, "delta_e12": 10_000_000}, time=_at(1)),
        AuditEvent(actor="compliance:check", action=v.CHECK_RESULT, resource="check:storage-limitation", purpose="compliance",
                   decision="allow", reason="passed", counts={"rows": 9, "rows_expired": 0,
                                                               "clock_epoch_s": int(datetime(2011, 12, 9, tzinfo=timezone.utc).timestamp())},
                   time=_at(1)),
    ]
    report = _report_for(audit_log, keys, events, clock_days=4)  # 4 days on: the subjects' notice (72 h) is overdue
    facts = report.facts
    jsonschema.validate(facts, report_schema())
    (incident,) = facts["incidents"]["rows"]
    assert incident["kind"] == "confidentiality" and incident["risk"] == "high" and incident["subjects"] == 40
    assert {n["to"]: n["state"] for n in incident["notifications"]} == {"authority": "made on time", "subjects": "overdue"}
    assert {n["to"]: n["made"] for n in incident["notifications"]}["authority"] == "2026-02-01T10:00:00Z"  # when made, not logged
    assert facts["summary"]["incidents_open"] == 1 and facts["summary"]["notifications_overdue"] == 1
    assert facts["erasure_receipts"]["rows"] == [{"store": "france", "receipts": 2, "requests": 2, "last": facts["erasure_receipts"]["rows"][0]["last"]}]
    (budget,) = facts["privacy_budget"]["stores"]
    assert budget["cap_epsilon_e6"] == 8_000_000 and budget["delta"] == pytest.approx(1e-5)
    assert facts["summary"]["stores_near_cap"] == ["germany"]  # 7.3 of 8
    (check,) = facts["checks"]["rows"]
    assert check["clock"] == "stored rows aged at 2011-12-09T00:00:00Z" and check["counts"] == {"rows": 9, "rows_expired": 0}
    html = report.html
    assert "inc-2026-01-31-abcdef" in html and "subjects (GDPR) due" in html and "overdue" in html
    assert "Erasure receipts per store" in html and "stored rows aged at 2011-12-09" in html
    assert "at 90% or more of their privacy cap: germany" in html
