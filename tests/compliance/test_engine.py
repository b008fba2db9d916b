"""Rule files as data: validated at load; evaluation fails closed; results become audit events."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from siloguard.audit import InMemoryAuditSink
from siloguard.compliance.checks import Outcome
from siloguard.compliance.context import Context
from siloguard.compliance.engine import audit_events, evaluate, failed_errors, select_rules
from siloguard.compliance.records import RECORDS_DIR, load_records
from siloguard.compliance.rules import RULES_DIR, load_rules
from siloguard.errors import ConfigError

SHIPPED = (RULES_DIR / "gdpr_ccpa.yaml").read_text()


def test_the_shipped_rules_cover_the_issue_and_name_their_sources() -> None:
    rules = load_rules()
    assert len(rules) == 15
    assert all(r.source and r.fix and r.condition for r in rules.values())
    training = {r.id for r in select_rules(rules, scope="training")}
    assert "storage-limitation" not in training and "breach-notification" not in training and "lawful-basis" in training


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("    check: lawful_basis\n", "    check: lawful_bass\n", "rules.lawful-basis.check: no such check"),
        ("    severity: error\n", "    severity: fatal\n", "rules.lawful-basis.severity: use one of error, warning, info"),
        ("    scope: [check, training]\n", "    scope: [nightly]\n", "unknown value 'nightly'"),
        ("  - id: consent-records\n", "  - id: lawful-basis\n", "rule 'lawful-basis' is defined twice"),
        ("    inspects: [data_maps, processing_records]\n", "    inspects: [crystal_ball]\n", "unknown value 'crystal_ball'"),
    ],
)
def test_when_a_rule_file_is_wrong_then_loading_names_the_place(tmp_path: Path, old: str, new: str, problem: str) -> None:
    assert old in SHIPPED
    (tmp_path / "rules.yaml").write_text(SHIPPED.replace(old, new, 1))
    with pytest.raises(ConfigError, match="rules.yaml"):
        try:
            load_rules(tmp_path)
        except ConfigError as exc:
            assert problem in str(exc)
            raise


def test_when_a_record_date_is_wrong_then_loading_names_the_line(tmp_path: Path) -> None:
    records = tmp_path / "records"
    shutil.copytree(RECORDS_DIR, records)
    dpia = records / "dpia.yaml"
    dpia.write_text(dpia.read_text().replace("approved_on: 2024-05-02", "approved_on: May 2024", 1))
    with pytest.raises(ConfigError, match=r"dpia\.yaml:\d+: assessments\.dpia-2024-001\.approved_on: 'May 2024' is not a date"):
        load_records(records)


def test_a_check_that_crashes_fails_closed(tiny_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from siloguard.compliance import checks

    def broken(ctx: Context, scope: str) -> Outcome:
        raise KeyError("boom")

    monkeypatch.setitem(checks.CHECKS, "lawful_basis", broken)
    ctx = Context(tiny_settings)
    (result,) = evaluate(ctx, [load_rules()["lawful-basis"]])
    assert result.status == "failed" and result.is_error
    assert result.outcome.findings == ["the check could not be evaluated: KeyError while evaluating"]


def test_results_become_valid_audit_events(tiny_settings) -> None:
    rules = load_rules()
    ctx = Context(tiny_settings.with_overrides(compliance={"as_of": "data"}))
    try:
        results = evaluate(ctx, [rules["lawful-basis"], rules["consent-records"], rules["request-deadlines"]], scope="training")
    finally:
        ctx.close()
    sink = InMemoryAuditSink()
    for event in audit_events(results, actor="compliance:check", action="compliance.check"):
        sink.record(event)  # validated: ids and counts only
    assert sink.actions().count("check.result") == 3
    assert sink.actions()[-1] == "compliance.check"
    coverage = [e for e in sink.events if e.action == "consent.coverage"]
    assert {e.store for e in coverage} == {"france", "germany", "united-kingdom"}
    summary = sink.events[-1]
    assert summary.decision == ("deny" if failed_errors(results) else "allow")
    assert summary.counts["rules"] == 3


def test_records_are_parsed_once_per_file_state_and_every_caller_gets_its_own_copy(tmp_path: Path) -> None:
    import os
    import shutil

    records = tmp_path / "records"
    shutil.copytree(RECORDS_DIR, records)
    first, second = load_records(records), load_records(records)
    assert first == second and first.activities is not second.activities
    first.activities.clear()  # a caller changing its copy changes nobody else's
    assert load_records(records).activities == second.activities
    processing = records / "processing.yaml"
    text = processing.read_text()
    controller = load_records(records).controller["name"]
    processing.write_text(text.replace(controller, controller + " Ltd", 1))
    os.utime(processing, ns=(processing.stat().st_atime_ns, processing.stat().st_mtime_ns + 1_000_000))
    assert load_records(records).controller["name"] == controller + " Ltd"  # the changed file is read again
