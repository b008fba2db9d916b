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


def test_when_a_dp_federation_runs_then_each_round_and_privacy_spend_is_in_a_verifying_audit_log(
    tiny_dp_settings: Settings,
) -> None:
    from siloguard.audit import AuditLog
    from siloguard.audit.heads import generate_keypair, load_public_key, load_signing_key

    keys = tiny_dp_settings.work_dir.parent / "keys"
    generate_keypair(keys / "audit.key", keys / "audit.pub")
    prepared = prepare_run(tiny_dp_settings)
    outcome = run_federation(tiny_dp_settings, prepared)

    log = AuditLog.open(tiny_dp_settings, signer=load_signing_key(keys / "audit.key"))
    try:
        log.sign_head()
        events = [stored.event for stored in log.iter_events()]
        report = log.verify(load_public_key(keys / "audit.pub"))
    finally:
        log.close()
    # verify() raises AuditIntegrityError on any mismatch; it returned, so check what it covered.
    assert report.tree_size == len(events) and report.uncovered == 0 and report.heads_checked >= 1
    rounds = [e for e in events if e.action == "federation.round"]
    assert [e.round for e in rounds] == [1, 2]
    # Each store released its popularity once, with its first round, through Flower's messages.
    assert set(outcome.reports[1].released_popularity) == set(outcome.reports[1].train)
    assert not outcome.reports[2].released_popularity
    assert all(e.counts["stores_trained"] == len(outcome.reports[e.round].train) for e in rounds)
    spends = [e for e in events if e.action == "privacy.spend"]
    assert {(e.store, e.round) for e in spends} == {
        (store, r) for r, rep in outcome.reports.items() for store in rep.train
    }
    for e in spends:
        total = outcome.reports[e.round].train[e.store]["epsilon"]
        assert e.counts["epsilon_total_e6"] == round(total * 1e6)
