"""``siloguard retention enforce``: rows past retention are deleted through the gate, audited."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.config import Settings
from siloguard.federation.runner import prepare_run
from siloguard.storage import create_engine

AS_OF = "2017-03-01T00:00"  # P6Y (6 x 365 days) earlier is 2011-03-03: the tiny data spans Jan-Apr 2011


@pytest.fixture
def prepared(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    prepare_run(tiny_settings)
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", tiny_settings.database.url)
    monkeypatch.setenv("SILOGUARD_KEYS__ROOT", str(tiny_settings.keys.root))
    return tiny_settings


def _silo_dates(settings: Settings) -> dict[str, pd.Series]:
    from siloguard.runs import RunManifest

    return {s: pd.to_datetime(pd.read_csv(p)["InvoiceDate"]) for s, p in RunManifest.read(settings.work_dir).stores.items()}


def test_dry_run_counts_and_deletes_nothing(prepared: Settings) -> None:
    before = _silo_dates(prepared)
    result = CliRunner().invoke(app, ["retention", "enforce", "--run", str(prepared.work_dir), "--as-of", AS_OF, "--dry-run"])
    assert result.exit_code == 0, result.output
    cutoff = pd.Timestamp(datetime(2017, 3, 1)) - pd.Timedelta(days=6 * 365)
    for store, dates in before.items():
        assert f"{store}: {int((dates < cutoff).sum())} of {len(dates)} rows past retention; would delete" in result.output
    assert {s: len(d) for s, d in _silo_dates(prepared).items()} == {s: len(d) for s, d in before.items()}


def test_enforce_deletes_exactly_the_expired_rows_through_the_gate(prepared: Settings) -> None:
    before = _silo_dates(prepared)
    cutoff = pd.Timestamp(datetime(2017, 3, 1)) - pd.Timedelta(days=6 * 365)
    expired = {s: int((d < cutoff).sum()) for s, d in before.items()}
    assert all(0 < n < len(before[s]) for s, n in expired.items())

    runner = CliRunner()
    failing = runner.invoke(app, ["check", "--run", str(prepared.work_dir), "--as-of", AS_OF, "--only", "storage-limitation"])
    assert failing.exit_code == 1
    result = runner.invoke(app, ["retention", "enforce", "--run", str(prepared.work_dir), "--as-of", AS_OF])
    assert result.exit_code == 0, result.output

    after = _silo_dates(prepared)
    for store, dates in after.items():
        assert len(dates) == len(before[store]) - expired[store]
        assert (dates >= cutoff).all()
    passing = runner.invoke(app, ["check", "--run", str(prepared.work_dir), "--as-of", AS_OF, "--only", "storage-limitation"])
    assert passing.exit_code == 0, passing.output

    engine = create_engine(prepared.database.url)
    try:
        with engine.connect() as conn:
            events = [json.loads(bytes(b)) for b in conn.execute(sa.text("SELECT body FROM audit_events ORDER BY seq")).scalars()]
    finally:
        engine.dispose()
    enforced = {e["related"]["store"]: e["counts"] for e in events if e["action"] == "retention.enforce"}
    assert enforced == {s: {"rows_deleted": n, "rows_expired": n} for s, n in expired.items()}
    gate = [e for e in events if e["actor"] == "job:retention" and e["action"] != "retention.enforce"]
    assert {e["decision"] for e in gate} == {"allow"} and len(gate) == len(expired)
    assert all(e["purpose"] == "essential.legal_obligation" for e in gate)
