"""``siloguard check``, ``siloguard check ropa`` and ``siloguard retention enforce`` end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.compliance.records import RECORDS_DIR
from siloguard.compliance.ropa import ART30_FIELDS, MISSING

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo configuration (embedded sample, shipped rules and records), database and keys in tmp_path."""
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", f"sqlite:///{tmp_path / 'siloguard.db'}")
    monkeypatch.setenv("SILOGUARD_KEYS__ROOT", str(tmp_path / "keys"))
    monkeypatch.setenv("SILOGUARD_WORK_DIR", str(tmp_path / "no-run"))
    monkeypatch.setenv("SILOGUARD_AUDIT__PUBLIC_KEY", str(tmp_path / "audit.pub"))
    return tmp_path


def test_check_passes_on_the_demo_configuration(env: Path) -> None:
    result = runner.invoke(app, ["check", "--as-of", "data", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True and report["failed"] == []
    statuses = {r["id"]: r["status"] for r in report["rules"]}
    assert statuses["storage-limitation"] == "passed"
    assert statuses["cross-border-transfers"] == "passed"
    assert set(statuses) >= {"lawful-basis", "records-of-processing", "dpia-approved", "request-deadlines", "audit-log-verifies"}


def test_check_on_todays_clock_fails_storage_limitation_with_exit_1(env: Path) -> None:
    result = runner.invoke(app, ["check", "--only", "storage-limitation", "--as-of", "now", "--no-record"])
    assert result.exit_code == 1
    assert "storage-limitation" in result.output and "failed" in result.output
    as_json = runner.invoke(app, ["check", "--only", "storage-limitation", "--as-of", "now", "--no-record", "--format", "json"])
    assert as_json.exit_code == 1
    (rule,) = json.loads(as_json.output)["rules"]
    assert rule["fix"].startswith("run `siloguard retention enforce`")
    assert all("older than the retention P6Y" in f for f in rule["findings"])


def test_check_only_one_rule_as_json(env: Path) -> None:
    result = runner.invoke(app, ["check", "--only", "dpia-approved", "--format", "json"])
    assert result.exit_code == 0, result.output
    rules = json.loads(result.output)["rules"]
    assert [r["id"] for r in rules] == ["dpia-approved"]
    assert rules[0]["source"] == ["GDPR Art. 35(1)", "GDPR Art. 35(3)"] and rules[0]["fix"] is None


def test_check_fails_for_a_violating_configuration(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = env / "records"
    shutil.copytree(RECORDS_DIR, records)
    dpia = records / "dpia.yaml"
    dpia.write_text(dpia.read_text().replace("status: approved\n    approved_on: 2024-05-02\n    approved_by: data protection officer\n    document: docs/COMPLIANCE.md (risks and measures of the federated",
                                             "status: draft\n    approved_by: data protection officer\n    document: docs/COMPLIANCE.md (risks and measures of the federated", 1))
    monkeypatch.setenv("SILOGUARD_COMPLIANCE__RECORDS", str(records))
    result = runner.invoke(app, ["check", "--only", "dpia-approved", "--format", "json"])
    assert result.exit_code == 1
    (rule,) = json.loads(result.output)["rules"]
    assert rule["status"] == "failed"
    assert rule["findings"] == ["DPIA dpia-2024-001 of activity train_recommender is draft, not approved"]
    assert rule["fix"].startswith("carry out the DPIA")


def test_check_unknown_rule_is_a_one_line_error(env: Path) -> None:
    result = runner.invoke(app, ["check", "--only", "no-such-rule"])
    assert result.exit_code == 2
    assert "unknown rule(s) no-such-rule" in result.output


def test_ropa_lists_every_activity_with_every_art30_field(env: Path) -> None:
    out = env / "ropa.md"
    result = runner.invoke(app, ["check", "ropa", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for name in ("Training the next-purchase recommender", "Campaign target lists", "RFM segments and store reports",
                 "Handling data-subject requests", "Audit log of data flows and decisions"):
        section = text.split(f"## {name}")[1].split("\n## ")[0]
        for field in ART30_FIELDS:
            row = next(line for line in section.splitlines() if line.startswith(f"| {field} |"))
            assert MISSING not in row, row
    assert "personal product recommendations (your purchases train the recommender) [personalize.profiling] (lawful basis: consent)" in text
    assert "transactions: P6Y" in text


def test_ropa_html_has_every_activity_and_art30_point_escaped_and_self_contained(env: Path) -> None:
    out = env / "ropa.html"
    result = runner.invoke(app, ["check", "ropa", "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http://" not in html.replace("https://", "")
    for field in ART30_FIELDS:
        assert html.count(f'<th scope="row">{field}</th>') == 5, field  # once per activity
    assert 'class="missing"' not in html
    assert 'id="train_recommender"' in html and "@media print" in html


def test_ropa_json(env: Path) -> None:
    result = runner.invoke(app, ["check", "ropa", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    ids = [a["id"] for a in doc["activities"]]
    assert ids == ["train_recommender", "campaign_lists", "rfm_reporting", "dsr_handling", "audit_logging"]
    train = doc["activities"][0]
    assert train["transfers"]["mechanisms"][0]["store"] == "international"
    assert train["erasure"]["retention"] == {"transactions": "P6Y"}


def test_check_results_appear_in_the_officer_report(env: Path) -> None:
    from siloguard.audit.heads import generate_keypair

    generate_keypair(env / "audit.key", env / "audit.pub")
    assert runner.invoke(app, ["check", "--only", "lawful-basis", "--only", "storage-limitation", "--as-of", "now"]).exit_code == 1
    assert runner.invoke(app, ["audit", "head", "--signing-key", str(env / "audit.key")]).exit_code == 0
    out = env / "report"
    result = runner.invoke(app, ["audit", "report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["check"]: r for r in json.loads((out / "report.json").read_text())["checks"]["rows"]}
    assert rows["lawful-basis"]["result"] == "passed"
    assert rows["storage-limitation"]["result"] == "failed"
    assert "storage-limitation" in (out / "report.html").read_text()
    # Purposes in plain words beside their keys (the command passes the taxonomy's names).
    assert "what the law requires (tax records, answering your requests) <small" in (out / "report.html").read_text()
    # The clock each check judged by: storage limitation aged the rows at the time of the check (--as-of now).
    aged = rows["storage-limitation"]["clock"].removeprefix("stored rows aged at ")
    assert aged[:4] >= "2026" and "rows_expired" in rows["storage-limitation"]["counts"]
    assert rows["lawful-basis"]["clock"] == "the wall clock when the check ran"


def test_the_report_prints_to_pdf_with_chromium_and_says_how_when_it_cannot(env: Path, monkeypatch) -> None:
    import shutil

    from siloguard.audit.heads import generate_keypair

    generate_keypair(env / "audit.key", env / "audit.pub")
    assert runner.invoke(app, ["check", "--only", "lawful-basis"]).exit_code == 0
    assert runner.invoke(app, ["audit", "head", "--signing-key", str(env / "audit.key")]).exit_code == 0
    assert shutil.which("chromium") is not None or not os.environ.get("CI"), "CI installs chromium (.ci/run)"
    if shutil.which("chromium") is not None:  # a developer machine without it still tests the refusal below
        made = runner.invoke(app, ["audit", "report", "--out", str(env / "report"), "--pdf"])
        assert made.exit_code == 0, made.output
        pdf = (env / "report" / "report.pdf").read_bytes()
        assert pdf[:5] == b"%PDF-" and len(pdf) > 10_000 and b"/Type /Page" in pdf
    monkeypatch.setenv("SILOGUARD_CHROMIUM", str(env / "no-such-browser"))
    refused = runner.invoke(app, ["audit", "report", "--out", str(env / "report2"), "--pdf"])
    assert refused.exit_code == 6 and "apt-get install chromium" in refused.output
    assert (env / "report2" / "report.html").is_file() and not (env / "report2" / "report.pdf").exists()


def test_when_a_run_of_the_historical_sample_is_checked_then_its_rows_age_on_the_data_clock(tmp_path, monkeypatch) -> None:
    """The embedded sample (2010-2011) records the data's clock in run.json; --run picks it up,
    with the run's database and keys; --as-of now still overrides it."""
    import json

    from siloguard.compliance.cli import _settings
    from siloguard.config import Settings
    from siloguard.federation.runner import prepare_run

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_COMPLIANCE__AS_OF"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "demo"
    prepare_run(Settings.build(work_dir=out, keys={"root": out / "keys"}, database={"url": f"sqlite:///{out / 'siloguard.db'}"}))
    assert json.loads((out / "run.json").read_text())["compliance_as_of"] == "data"

    settings = _settings(out=out, db=None, as_of=None)
    assert settings.compliance.as_of == "data"
    assert settings.keys.root == (out / "keys").resolve()
    assert settings.database.url == f"sqlite:///{(out / 'siloguard.db').resolve()}"
    assert _settings(out=out, db=None, as_of="now").compliance.as_of is None


def test_check_ends_with_a_summary_line_and_refuses_a_run_that_is_not_there(env: Path) -> None:
    passed = runner.invoke(app, ["check", "--as-of", "data"])
    assert passed.exit_code == 0, passed.output
    last = passed.output.strip().splitlines()[-1]
    assert last.startswith("OK: 15 rules on ") and "0 failed" in last
    failed = runner.invoke(app, ["check", "--as-of", "now"])
    assert failed.exit_code == 1 and failed.output.strip().splitlines()[-1].startswith("FAILED: ")
    missing = runner.invoke(app, ["check", "--run", str(env / "nothere")])
    assert missing.exit_code == 2 and "no such directory" in missing.output
