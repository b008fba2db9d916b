"""The federation's pre-flight: a run that breaks a rule is refused before any store trains,
and the refusal is in the audit log; a compliant run records its passing checks first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from siloguard.compliance.records import RECORDS_DIR
from siloguard.config import Settings
from siloguard.errors import ComplianceError
from siloguard.federation.runner import prepare_run, run_federation
from siloguard.storage import create_engine


def _events(settings: Settings) -> list[dict]:
    engine = create_engine(settings.database.url)
    try:
        with engine.connect() as conn:
            bodies = conn.execute(sa.text("SELECT body FROM audit_events ORDER BY seq")).scalars().all()
    finally:
        engine.dispose()
    return [json.loads(bytes(b)) for b in bodies]


def _records_with_coordinator_in(tmp_path: Path, country: str) -> Path:
    records = tmp_path / "records"
    shutil.copytree(RECORDS_DIR, records)
    transfers = records / "transfers.yaml"
    text = transfers.read_text()
    assert "  country: GB\n" in text
    transfers.write_text(text.replace("  country: GB\n", f"  country: {country}\n"))
    return records


def test_a_violating_run_is_refused_before_any_store_trains_and_audited(tiny_settings: Settings, tmp_path: Path) -> None:
    settings = tiny_settings.with_overrides(compliance={"records": _records_with_coordinator_in(tmp_path, "US")})
    prepared = prepare_run(settings)

    with pytest.raises(ComplianceError) as refused:
        run_federation(settings, prepared)

    message = str(refused.value)
    assert refused.value.exit_code == 10
    assert refused.value.rules == ("cross-border-transfers",)
    assert message.startswith("training refused by compliance rule cross-border-transfers (GDPR Art. 44; GDPR Art. 45; GDPR Art. 46): ")
    assert "sends updates to a coordinator in US (no adequacy decision) and has no transfer mechanism on record" in message
    assert "Fix: put a transfer mechanism" in message

    events = _events(settings)
    actions = [e["action"] for e in events]
    preflight = [e for e in events if e["action"] == "compliance.preflight"]
    assert len(preflight) == 1
    assert preflight[0]["decision"] == "deny" and preflight[0]["reason"] == "failed:cross-border-transfers"
    denied = [e for e in events if e["action"] == "check.result" and e["decision"] == "deny"]
    assert [e["resource"] for e in denied] == ["check:cross-border-transfers"]
    # nothing trained: no gate decision of a store, no round, no privacy spend, no model, no ledger
    assert not {"federation.round", "privacy.spend"} & set(actions)
    assert all(e["actor"] == "coordinator" for e in events)
    assert not (settings.work_dir / "model").exists()
    engine = create_engine(settings.database.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM privacy_ledger")).scalar_one() == 0
    finally:
        engine.dispose()


def test_a_compliant_run_records_its_checks_before_round_one(tiny_settings: Settings) -> None:
    prepared = prepare_run(tiny_settings)
    outcome = run_federation(tiny_settings, prepared)
    assert outcome.model_dir is not None

    actions = [e["action"] for e in _events(tiny_settings)]
    first_round = actions.index("federation.round")
    assert actions.index("compliance.preflight") < first_round
    preflight = next(e for e in _events(tiny_settings) if e["action"] == "compliance.preflight")
    assert preflight["decision"] == "allow"
    checked = {e["resource"] for e in _events(tiny_settings) if e["action"] == "check.result"}
    assert checked == {
        "check:lawful-basis", "check:consent-records", "check:purpose-limitation", "check:data-minimisation",
        "check:opt-out-honoured", "check:sensitive-data", "check:cross-border-transfers",
        "check:records-of-processing", "check:dpia-approved", "check:privacy-budget",
    }
