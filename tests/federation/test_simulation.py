"""A real 2-round, 3-store federation through Flower's simulation engine (Ray)."""

from __future__ import annotations

import json

from siloguard.config import Settings
from siloguard.federation.registry import sha256_file
from siloguard.federation.runner import prepare_run, run_federation
from siloguard.recommender.model import SharedModel


def test_when_three_stores_federate_for_two_rounds_then_a_model_and_manifest_are_saved(
    tiny_settings: Settings,
) -> None:
    prepared = prepare_run(tiny_settings)
    assert sorted(prepared.stores) == ["france", "germany", "united-kingdom"]
    rounds_seen: list[int] = []

    outcome = run_federation(tiny_settings, prepared, lambda r: rounds_seen.append(r.server_round))

    assert rounds_seen == [1, 2]
    for report in outcome.reports.values():
        assert sorted(report.train) == sorted(prepared.stores)
        assert sorted(report.evaluate) == sorted(prepared.stores)
        assert report.failures == 0
    model_dir = tiny_settings.work_dir / "model"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(model_dir / "model.pt")
    assert manifest["rounds"] == 2
    assert manifest["stores"] == sorted(prepared.stores)
    expected = SharedModel(prepared.items, tiny_settings.model.dim, tiny_settings.model.hidden).state_dict()
    assert {k: tuple(v) for k, v in manifest["shared_parameters"].items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    overall = manifest["metrics"]["overall"]
    assert overall["users"] == sum(m["users"] for m in manifest["metrics"]["per_store"].values())
    assert 0.0 <= overall["ndcg@10"] <= 1.0
