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


def test_when_central_dp_is_on_then_the_run_finishes_and_reports_store_level_epsilon(tiny_settings: Settings) -> None:
    settings = tiny_settings.with_overrides(
        privacy={"enabled": False, "central": True, "central_noise_multiplier": 1.0, "central_clipping_norm": 0.5},
    )
    prepared = prepare_run(settings)
    run_federation(settings, prepared)
    manifest = json.loads((settings.work_dir / "model" / "manifest.json").read_text())
    central = manifest["privacy"]["central"]
    assert central["unit"].startswith("store")
    assert central["rounds"] == 2
    from siloguard.privacy.dp import epsilon_of

    assert central["epsilon"] == epsilon_of("rdp", [(1.0, 1.0, 2)], 1e-5) > 0
