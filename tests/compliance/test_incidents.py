"""The incident register: clocks per jurisdiction, audited steps, the check rule, the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from siloguard.audit.log import AuditLog
from siloguard.cli import app as cli_app
from siloguard.compliance.incidents import IncidentRegister
from siloguard.config import Settings
from siloguard.errors import IncidentError
from siloguard.storage import create_engine, upgrade_database
from tests.compliance.conftest import NOW
from tests.storage.databases import fresh_database

JURISDICTIONS = {"france": "gdpr", "germany": "gdpr", "california": "ccpa"}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def register(request: pytest.FixtureRequest, tmp_path: Path, settings: Settings):
    with fresh_database(request.param, tmp_path) as url:
        engine = create_engine(url)
        upgrade_database(engine)
        audit = AuditLog.open(settings.with_overrides(database={"url": url}, audit={"signing_key": tmp_path / "a.key",
                                                                                     "public_key": tmp_path / "a.pub"}))
        try:
            yield IncidentRegister(engine, audit, clock=Clock(NOW))
        finally:
            audit.close()
            engine.dispose()


def _open(register: IncidentRegister, **changes):
    args = dict(kind="confidentiality", severity="high", risk="risk", aware_at=NOW - timedelta(hours=10), stores=["france"],
                subjects=120, records=800, summary="a laptop with an unencrypted export was stolen", jurisdictions=JURISDICTIONS,
                actor="officer:test")
    return register.open(**{**args, **changes})


def test_a_gdpr_breach_with_risk_owes_the_authority_within_72_hours_of_awareness(register: IncidentRegister) -> None:
    incident = _open(register)
    assert [(d.clock.party, d.clock.jurisdiction, d.due_at) for d in incident.dues] == [
        ("authority", "gdpr", NOW - timedelta(hours=10) + timedelta(hours=72))]  # no subjects' notice below high risk
    high = _open(register, risk="high", stores=["france", "california"], subjects=600)
    owed = {(d.clock.party, d.clock.jurisdiction): d.due_at - high.aware_at for d in high.dues}
    assert owed == {("authority", "gdpr"): timedelta(hours=72), ("subjects", "gdpr"): timedelta(hours=72),
                    ("subjects", "ccpa"): timedelta(days=30), ("authority", "ccpa"): timedelta(days=30)}  # > 500 residents
    small = _open(register, risk="high", stores=["california"], subjects=40)
    assert {d.clock.party for d in small.dues} == {"subjects"}  # the AG only above 500 Californians
    assert _open(register, risk="unlikely").dues == ()  # documented only (Art. 33(5))


def test_every_step_is_audited_with_ids_and_counts_only(register: IncidentRegister) -> None:
    incident = _open(register)
    register.update(incident.id, actor="officer:test", subjects=150)
    register.notify(incident.id, "authority", actor="officer:test", at=NOW)
    register.close(incident.id, actor="officer:test", reason="contained")
    events = [s.event for s in register.audit.iter_events() if s.event.resource == f"incident:{incident.id}"]
    assert [e.action for e in events] == ["incident.opened", "incident.updated", "incident.notified", "incident.closed"]
    assert events[1].counts["subjects"] == 150 and events[2].reason == "authority"
    assert all("laptop" not in json.dumps(dict(e.counts)) + str(e.reason) for e in events)  # the summary stays in the register


def test_the_check_fails_on_an_overdue_notification_and_warns_on_a_late_one(register: IncidentRegister, run_rule) -> None:
    assert run_rule("breach-notification", engine=register.engine).status == "passed"
    late = _open(register, aware_at=NOW - timedelta(hours=80))  # the authority was due 8 hours ago
    result = run_rule("breach-notification", engine=register.engine)
    assert result.status == "failed" and result.is_error
    assert f"incident {late.id}: authority notification (GDPR, GDPR Art. 33(1)) was due 2026-01-15 04:00 UTC" in result.outcome.findings[0]
    assert result.outcome.counts["notifications_overdue"] == 1
    register.close(late.id, actor="officer:test", reason="contained")
    assert run_rule("breach-notification", engine=register.engine).status == "failed"  # closing does not excuse it
    register.notify(late.id, "authority", actor="officer:test", at=NOW)
    result = run_rule("breach-notification", engine=register.engine)
    assert result.status == "warning" and "after the 2026-01-15 04:00 UTC deadline" in result.outcome.findings[1]


def test_bad_input_is_refused_with_what_to_do(register: IncidentRegister) -> None:
    with pytest.raises(IncidentError, match="looks like an e-mail address"):
        _open(register, summary="leaked the address jane.doe@example.org")
    with pytest.raises(IncidentError, match="looks like"):
        _open(register, summary="customer 17850 was exposed")
    with pytest.raises(IncidentError, match="not a store of this run"):
        _open(register, stores=["atlantis"])
    with pytest.raises(IncidentError, match="in the future"):
        _open(register, aware_at=NOW + timedelta(days=1))
    incident = _open(register)
    with pytest.raises(IncidentError, match="before the incident was known"):
        register.notify(incident.id, "authority", actor="officer:test", at=NOW - timedelta(days=2))
    register.notify(incident.id, "authority", actor="officer:test")
    with pytest.raises(IncidentError, match="already recorded"):
        register.notify(incident.id, "authority", actor="officer:test")
    register.close(incident.id, actor="officer:test", reason="resolved")
    with pytest.raises(IncidentError, match="is closed"):
        register.update(incident.id, actor="officer:test", subjects=3)
    with pytest.raises(IncidentError, match="no incident 'inc-nope'"):
        register.get("inc-nope")
    assert len(register.list()) == 1  # nothing half written by the refusals


def test_the_cli_opens_notifies_lists_and_closes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"stores": ["alpha", "beta"], "jurisdictions": {"beta": "ccpa"}}))
    db = f"sqlite:///{tmp_path / 'siloguard.db'}"
    engine = create_engine(db)
    upgrade_database(engine)
    engine.dispose()
    env = {"SILOGUARD_KEYS__ROOT": str(tmp_path / "keys"), "SILOGUARD_AUDIT__SIGNING_KEY": str(tmp_path / "a.key"),
           "SILOGUARD_AUDIT__PUBLIC_KEY": str(tmp_path / "a.pub")}
    runner = CliRunner()

    def cli(*args: str):
        return runner.invoke(cli_app, ["incident", *args, "--run", str(run), "--db", db], env=env)

    opened = cli("open", "--kind", "confidentiality", "--risk", "high", "--store", "alpha", "--store", "beta",
                 "--subjects", "40", "--summary", "misdirected e-mail with an order export")
    assert opened.exit_code == 0, opened.output
    assert "authority" in opened.output and "GDPR Art. 33(1)" in opened.output and "CCPA" in opened.output
    listed = json.loads(cli("list", "--json").stdout)
    (incident,) = listed["incidents"]
    assert incident["jurisdictions"] == ["ccpa", "gdpr"] and incident["stores"] == ["alpha", "beta"]
    assert {(n["to"], n["jurisdiction"]) for n in incident["notifications"]} == {("authority", "gdpr"), ("subjects", "gdpr"),
                                                                                 ("subjects", "ccpa")}
    assert cli("notify", incident["id"], "--to", "authority").exit_code == 0
    wrong = cli("notify", incident["id"], "--to", "authority")
    assert wrong.exit_code == 2 and "already recorded" in wrong.output
    bad_time = cli("notify", incident["id"], "--to", "subjects", "--at", "yesterday")
    assert bad_time.exit_code == 2 and "a date and time such as" in bad_time.output
    closed = cli("close", incident["id"], "--reason", "contained")
    assert closed.exit_code == 0 and "still owed" in closed.output  # the subjects' notices
    assert "OVERDUE" not in cli("list").stdout and incident["id"] in cli("list").stdout
    assert cli("list", "--open").stdout.strip() == "no incidents open in the register"
    missing = cli("close", "inc-nope", "--reason", "resolved")
    assert missing.exit_code == 2 and "siloguard incident list" in missing.output


def test_review_a_notification_cannot_be_recorded_ahead_and_summaries_may_carry_dates(register: IncidentRegister, run_rule) -> None:
    """Review findings: a future --at made an overdue notification pass; dates were refused as phone numbers."""
    incident = _open(register, summary="laptop lost on 2026-01-05 at 09:30, found 05/01/2026")  # dates are fine
    with pytest.raises(IncidentError, match="in the future"):
        register.notify(incident.id, "authority", actor="officer:test", at=NOW + timedelta(days=3))
    assert register.get(incident.id).authority_notified_at is None
    register.notify(incident.id, "authority", actor="officer:test", at=NOW - timedelta(hours=1))
    (event,) = [s.event for s in register.audit.iter_events() if s.event.action == "incident.notified"]
    assert event.counts["notified_epoch_s"] == int((NOW - timedelta(hours=1)).timestamp())  # the report uses this time


def test_review_a_refused_audit_append_writes_nothing_to_the_register(register: IncidentRegister) -> None:
    from siloguard.errors import AuditError

    class Refusing:
        def append(self, events):
            raise AuditError("refused")

    refusing = IncidentRegister(register.engine, Refusing(), clock=register.clock)
    with pytest.raises(AuditError):
        _open(refusing)
    assert register.list() == []  # never a register row without its audit event
