"""The model registry: versions with parents, manifests, list/show/rollback (audited)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError
from siloguard.federation.registry import (
    current_version,
    list_versions,
    load_manifest,
    rollback,
    save_model,
    sha256_counts,
    sha256_file,
    sha256_from_counts,
)
from siloguard.federation.strategy import RoundReport
from siloguard.recommender.model import SharedModel
from tests.storage.databases import BACKENDS, fresh_database


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """A run directory and its database (the audit log rollback writes to), once per backend."""
    from siloguard.storage.db import create_engine, upgrade_database

    with fresh_database(request.param, tmp_path) as url:
        s = Settings.build(work_dir=tmp_path / "work", database={"url": url}, model={"dim": 4, "hidden": 2},
                           privacy={"enabled": True})
        engine = create_engine(s.database.url)
        upgrade_database(engine)
        engine.dispose()
        yield s


def _reports(eps: float) -> dict[int, RoundReport]:
    metrics = {"users": 5.0, "ndcg@10": 0.5, "hr@10": 0.6, "recall@20": 0.7}
    one = RoundReport(1, train={"france": {"epsilon": eps / 2, "delta": 1e-5, "dp-steps": 3},
                                "germany": {"epsilon": eps / 2, "delta": 1e-5, "dp-steps": 3}},
                      evaluate={"france": metrics, "germany": metrics}, model_sha256="a" * 64)
    two = RoundReport(2, train={"france": {"epsilon": eps, "delta": 1e-5, "dp-steps": 6},
                                "germany": {"epsilon": eps, "delta": 1e-5, "dp-steps": 6}},
                      evaluate={"france": metrics, "germany": metrics}, rejected={"germany": "update-non-finite"},
                      dropped=["italy"], model_sha256="b" * 64)
    return {1: one, 2: two}


def _model(seed: int) -> SharedModel:
    return SharedModel(10, 4, 2, seed=seed)


def _audit(settings: Settings) -> list:
    from siloguard.audit import AuditLog

    log = AuditLog.open(settings, signer=False)
    try:
        return [stored.event for stored in log.iter_events()]
    finally:
        log.close()


def test_each_saved_model_is_a_new_version_whose_parent_is_the_previous_one(settings: Settings):
    first = save_model(_model(1), settings, _reports(1.0))
    second = save_model(_model(2), settings, _reports(2.0))
    assert (first.name, second.name) == ("v1", "v2")
    assert current_version(settings.work_dir) == "v2"
    assert [m["version"] for m in list_versions(settings.work_dir)] == ["v1", "v2"]
    assert [m["parent"] for m in list_versions(settings.work_dir)] == [None, "v1"]
    # The current model is reachable at the old path too (work_dir/model).
    assert json.loads((settings.work_dir / "model" / "manifest.json").read_text())["version"] == "v2"


def test_a_manifest_holds_rounds_participants_epsilon_metrics_and_the_files_sha256(settings: Settings):
    version = save_model(_model(1), settings, _reports(3.0))
    m = load_manifest(settings.work_dir, "v1")
    assert m["sha256"] == sha256_file(version / "model.pt")
    assert m["rounds"] == 2
    assert m["participants"] == ["france", "germany"]  # germany's round-2 update was rejected, round 1 counted
    assert m["epsilon_per_store"] == {"france": 3.0, "germany": 3.0}
    assert m["metrics"]["overall"]["ndcg@10"] == pytest.approx(0.5)
    assert m["history"][1]["rejected"] == {"germany": "update-non-finite"}
    assert m["history"][1]["dropped"] == ["italy"]
    assert m["history"][1]["participants"] == ["france"]
    assert m["history"][1]["model_sha256"] == "b" * 64
    assert (version / "model.pt").stat().st_mode & 0o777 == 0o600


def test_rollback_makes_an_earlier_version_current_and_is_audited(settings: Settings):
    save_model(_model(1), settings, _reports(1.0))
    save_model(_model(2), settings, _reports(2.0))
    manifest = rollback(settings, "v1")
    assert manifest["version"] == "v1"
    assert current_version(settings.work_dir) == "v1"
    restored = torch.load(settings.work_dir / "model" / "model.pt")
    assert all(torch.equal(restored[k], v) for k, v in _model(1).state_dict().items())
    (event,) = [e for e in _audit(settings) if e.action == "model.rollback"]
    assert event.resource == "model:v1" and event.reason == "from-v2"
    assert event.counts["to_version"] == 1 and event.counts["from_version"] == 2
    assert sha256_from_counts(dict(event.counts)) == manifest["sha256"]


def test_when_the_versions_file_was_changed_then_rollback_refuses_and_nothing_changes(settings: Settings):
    first = save_model(_model(1), settings, _reports(1.0))
    save_model(_model(2), settings, _reports(2.0))
    (first / "model.pt").write_bytes(b"swapped")
    with pytest.raises(DataError, match="sha256"):
        rollback(settings, "v1")
    assert current_version(settings.work_dir) == "v2"
    assert not [e for e in _audit(settings) if e.action == "model.rollback"]


@pytest.mark.parametrize("version", ["v9", "1", "latest", "v0"])
def test_when_the_version_is_unknown_or_malformed_then_rollback_says_so(settings: Settings, version: str):
    save_model(_model(1), settings, _reports(1.0))
    with pytest.raises(ConfigError):
        rollback(settings, version)
    assert current_version(settings.work_dir) == "v1"


def test_a_model_directory_from_before_the_registry_becomes_the_first_version(settings: Settings):
    legacy = settings.work_dir / "model"
    legacy.mkdir(parents=True)
    (legacy / "model.pt").write_bytes(b"old weights")
    (legacy / "manifest.json").write_text(json.dumps({"version": "20260101T000000000000Z", "sha256": sha256_file(legacy / "model.pt"),
                                                      "rounds": 7, "stores": ["france"], "metrics": {"overall": {}}}))
    save_model(_model(1), settings, _reports(1.0))
    assert [(m["version"], m["parent"]) for m in list_versions(settings.work_dir)] == [("v1", None), ("v2", "v1")]
    assert (settings.work_dir / "models" / "v1" / "model.pt").read_bytes() == b"old weights"
    assert current_version(settings.work_dir) == "v2"


def test_sha256_round_trips_through_audit_counts():
    digest = "0123456789abcdef" * 4
    counts = sha256_counts(digest)
    assert all(0 <= v < 2**53 for v in counts.values())
    assert sha256_from_counts(counts) == digest


def test_model_cli_lists_shows_and_rolls_back(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    save_model(_model(1), settings, _reports(1.0))
    save_model(_model(2), settings, _reports(2.0))
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", settings.database.url)
    runner = CliRunner()
    out = ["--out", str(settings.work_dir)]
    listed = runner.invoke(app, ["model", "list", *out])
    assert listed.exit_code == 0, listed.output
    assert "v1" in listed.output and "v2" in listed.output
    shown = runner.invoke(app, ["model", "show", "v1", "--json", *out])
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == "v1"
    rolled = runner.invoke(app, ["model", "rollback", "v1", *out])
    assert rolled.exit_code == 0, rolled.output
    assert "current model is now v1" in rolled.output
    assert current_version(settings.work_dir) == "v1"
    bad = runner.invoke(app, ["model", "rollback", "v7", *out])
    assert bad.exit_code == 2 and "known versions are v1, v2" in bad.output
