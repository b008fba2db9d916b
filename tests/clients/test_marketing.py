"""A store's marketing through its gate: recommendations, profiles, lifetime value, campaigns.

Consent decides who is in anything used for marketing, at every call: a customer without it
never appears, one who withdraws is gone at the next call; every file is audited and 0600.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from siloguard.audit import AuditLog
from siloguard.cli import app
from siloguard.clients.gating import store_consent, store_keys
from siloguard.clients.marketing import MARKETING, PROFILING, customer_profiles, customer_values
from siloguard.clients.recommend import Recommender
from siloguard.config import Settings
from siloguard.errors import AccessDenied
from siloguard.federation.runner import prepare_run
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.recommender.model import SharedModel
from tests.conftest import tiny_customers, write_consent, write_tiny_retail

STORE = "united-kingdom"


@pytest.fixture
def tiny_retail(tmp_path):
    return write_tiny_retail(tmp_path / "tiny.csv", customers_per_country=40)


@pytest.fixture
def run(tmp_path, tiny_retail, tiny_settings: Settings):
    """Five in six customers consent to profiling, every other one to marketing."""
    customers = tiny_customers(tiny_retail)
    profiling = [c for i, c in enumerate(customers) if i % 6]
    marketing = customers[::2]
    frames = [
        pd.read_csv(write_consent(tmp_path / "p.csv", profiling)),
        pd.read_csv(write_consent(tmp_path / "m.csv", marketing, purpose=MARKETING)),
    ]
    pd.concat(frames).to_csv(tmp_path / "consent.csv", index=False)
    settings = tiny_settings.with_overrides(data={"consent": tmp_path / "consent.csv"})
    prepare_run(settings)
    catalogue = json.loads((settings.work_dir / "catalogue.json").read_text())["stock_codes"]
    torch.save(SharedModel(len(catalogue), settings.model.dim, settings.model.hidden).state_dict(), tmp_path / "model.pt")
    (tmp_path / "catalogue.json").write_text(json.dumps({"stock_codes": catalogue, "descriptions": {c: f"THING {c}" for c in catalogue}}))
    return settings, profiling, marketing, tmp_path / "model.pt"


def _store_customers(settings: Settings) -> list[int]:
    frame = pd.read_csv(settings.work_dir / "stores" / f"{STORE}.csv")
    return sorted({int(float(c)) for c in frame["CustomerID"]})


def _pseudonyms(settings: Settings, ids) -> set[str]:
    p = Pseudonymiser(store_keys(settings, STORE))
    return {p.pseudonym(c) for c in ids}


def _withdraw(settings: Settings, customer: int, purpose: str) -> None:
    store_consent(settings, STORE).record([customer], purpose, "withdraw", source="store", at=datetime.now(UTC))


def _events(settings: Settings, action: str) -> list:
    with AuditLog.open(settings, signer=False) as log:
        return [s.event for s in log.iter_events() if s.event.action == action]


def test_when_staff_ask_for_recommendations_then_consenting_customers_get_scored_products_and_a_withdrawal_ends_it(run) -> None:
    settings, profiling, _, model = run
    customer = next(c for c in _store_customers(settings) if c in profiling)
    recommender = Recommender(settings, STORE, model_file=model)

    answer = recommender.recommend(str(customer), k=5)

    items = answer.items
    assert len(items) == 5 and list(items["rank"]) == [1, 2, 3, 4, 5]
    assert items["score"].between(0, 1).all() and items["score"].is_monotonic_decreasing
    assert items["description"].str.startswith("THING ").all()
    for basis, reason in zip(items["basis"], items["reason"]):
        pattern = r"bought \d+ times?, last \d+ days? ago" if basis == "past_purchase" else r"(bought together with THING \S+|popular with) customers across stores|bought together with THING \S+ by customers across stores"
        assert re.fullmatch(pattern, reason), reason
    assert answer.as_of == "2011-04-28" or answer.as_of  # the data's own clock
    assert answer.to_json()["items"][0]["rank"] == 1

    _withdraw(settings, customer, PROFILING)
    with pytest.raises(AccessDenied, match="does not consent") as withdrawn:
        recommender.recommend(str(customer), k=5)
    outsider = next(c for c in _store_customers(settings) if c not in profiling)
    with pytest.raises(AccessDenied) as refused:
        recommender.recommend(f"{outsider}.0", k=5)
    assert str(refused.value) == str(withdrawn.value)  # the same answer: nothing about the person leaks
    assert str(customer) not in str(withdrawn.value)


def test_when_profiles_and_values_are_made_then_only_customers_consenting_to_profiling_are_in_them(run, tmp_path) -> None:
    settings, profiling, _, _ = run
    customers = _store_customers(settings)
    allowed = _pseudonyms(settings, set(customers) & set(profiling))
    outsiders = _pseudonyms(settings, set(customers) - set(profiling))

    profiles = customer_profiles(settings, STORE)
    assert set(profiles.frame["customer_id"]) == allowed
    assert profiles.summary["customers"]["all"] == len(allowed)
    assert set(profiles.frame["stage"]) <= {"new", "active", "at_risk", "lapsed"}

    values, _, _ = customer_values(settings, STORE, days=30)
    assert set(values["customer_id"]) == allowed
    assert (values["purchases_30d"] >= 0).all() and values["p_alive"].between(0, 1).all()

    gone = next(c for c in customers if c in profiling)
    _withdraw(settings, gone, PROFILING)
    again = customer_profiles(settings, STORE)
    assert set(again.frame["customer_id"]) == allowed - _pseudonyms(settings, [gone])

    env = {"SILOGUARD_DATABASE__URL": settings.database.url, "SILOGUARD_KEYS__ROOT": str(settings.keys.root)}
    out = tmp_path / "profiles.csv"
    result = CliRunner().invoke(app, ["store", "profiles", STORE, "--csv", str(out), "--out", str(settings.work_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    text = out.read_text()
    assert not any(p in text for p in outsiders | _pseudonyms(settings, [gone]))
    exports = _events(settings, "marketing.export")
    assert exports[-1].resource == "export:profiles" and exports[-1].counts["rows"] == len(allowed) - 1
    assert exports[-1].actor == "staff:operator" and exports[-1].purpose == PROFILING


def test_when_a_campaign_is_exported_with_a_control_group_then_it_is_recorded_and_its_report_follows_consent(run, tmp_path) -> None:
    settings, _, marketing, model = run
    raw = pd.read_csv(settings.work_dir / "stores" / f"{STORE}.csv")
    item = str(raw["StockCode"].value_counts().index[0])
    env = {"SILOGUARD_DATABASE__URL": settings.database.url, "SILOGUARD_KEYS__ROOT": str(settings.keys.root)}
    runner = CliRunner()
    out = tmp_path / "list.csv"
    args = ["store", "campaign", "create", STORE, "--item", item, "--model", str(model), "--top", "1000", "--control", "34%", "--seed", "3",
            "--as-of", "2011-03-15", "--csv", str(out), "--out", str(settings.work_dir)]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    campaign = re.search(r"campaign (c[0-9a-f]{8})", result.output).group(1)
    assert out.stat().st_mode & 0o777 == 0o600
    listed = pd.read_csv(out)
    allowed = _pseudonyms(settings, set(_store_customers(settings)) & set(marketing))
    assert set(listed["customer_id"]) <= allowed
    assert (listed["as_of"] == "2011-03-15").all() and (listed["currency"] == "GBP").all()
    shelf = raw.loc[raw["StockCode"] == item, "Description"].iloc[0]  # the store's own shelf description
    assert (listed["description"] == shelf).all() and listed["score"].between(0, 1).all()
    export = _events(settings, "marketing.export")[-1]
    assert export.resource == "export:campaign" and export.counts["rows"] == len(listed) and export.counts["control"] >= 1

    report_json = tmp_path / "report.json"
    report_args = ["store", "campaign", "report", campaign, STORE, "--until", "2011-04-30", "--cost", "0.5", "--margin", "0.3",
                   "--json", str(report_json), "--out", str(settings.work_dir)]
    result = runner.invoke(app, report_args, env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(report_json.read_text())
    assert report_json.stat().st_mode & 0o777 == 0o600
    arms = report["arms"]
    assert arms["treatment"]["customers"] == len(listed) and arms["control"]["customers"] == export.counts["control"]
    assert set(report["uplift"]) == {"conversion", "revenue_per_customer", "items_per_customer"}
    assert report["roi"]["low"] <= report["roi"]["estimate"] <= report["roi"]["high"]
    assert _events(settings, "marketing.export")[-1].resource == "export:campaign-report"

    # A treatment customer withdraws: the next report leaves them out, and says so (a count).
    pseudonym_of = {p: c for c in _store_customers(settings) for p in _pseudonyms(settings, [c])}
    leaving = pseudonym_of[listed["customer_id"].iloc[0]]
    _withdraw(settings, leaving, MARKETING)
    result = runner.invoke(app, report_args, env=env)
    assert result.exit_code == 0, result.output
    again = json.loads(report_json.read_text())
    assert again["arms"]["treatment"]["customers"] == len(listed) - 1
    assert again["no_longer_consenting"]["treatment"] == 1
    assert listed["customer_id"].iloc[0] not in report_json.read_text()

    missing = runner.invoke(app, ["store", "campaign", "report", "c00000000", STORE, "--until", "2011-04-30", "--out", str(settings.work_dir)], env=env)
    assert missing.exit_code != 0 and "no campaign" in missing.output

    # The store's KPI report: the campaign's result with its interval, counts only, no customer.
    page = tmp_path / "kpis.html"
    result = runner.invoke(app, ["store", "report", STORE, "--html", str(page), "--out", str(settings.work_dir)], env=env)
    assert result.exit_code == 0, result.output
    facts = json.loads(page.with_suffix(".json").read_text())
    assert page.stat().st_mode & 0o777 == 0o600 and page.with_suffix(".json").stat().st_mode & 0o777 == 0o600
    assert [c["campaign"] for c in facts["campaigns"]] == [campaign]
    assert facts["marketing_consenting"] == len(allowed) - 1  # the one who withdrew is not counted
    everyone = _pseudonyms(settings, _store_customers(settings))
    text = page.read_text() + page.with_suffix(".json").read_text()
    assert not any(p in text for p in everyone) and not any(str(c) in text for c in _store_customers(settings))
    if shutil.which("chromium") or Path("/usr/bin/chromium").exists():
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
             "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=90, check=False,
        ).stdout
        plots = re.search(r"data-plots=\"(\d+)\"", dom).group(1)
        assert int(plots) >= 3 and f'data-plots-rendered="{plots}"' in dom


def test_when_two_versions_are_compared_then_customers_split_by_a_stable_hash_and_each_arm_has_intervals(run, tmp_path) -> None:
    from siloguard.clients.compare import arm_of, compare_versions

    settings, profiling, _, model = run
    catalogue = json.loads((settings.work_dir / "catalogue.json").read_text())["stock_codes"]
    for version, seed in (("v1", 0), ("v2", 5)):
        folder = tmp_path / "registry" / "models" / version
        folder.mkdir(parents=True)
        torch.save(SharedModel(len(catalogue), settings.model.dim, settings.model.hidden, seed=seed).state_dict(), folder / "model.pt")
        (folder / "catalogue.json").write_text(json.dumps({"stock_codes": catalogue}))

    result = compare_versions(settings, STORE, tmp_path / "registry", "v1", "v2")

    consenting = _pseudonyms(settings, set(_store_customers(settings)) & set(profiling))
    expected_a = sum(arm_of(p, "v1", "v2") == "A" for p in consenting)
    assert result["arms"]["A"]["customers"] + result["arms"]["B"]["customers"] <= len(consenting)
    assert 0 < result["arms"]["A"]["customers"] <= expected_a
    for arm in ("A", "B"):
        ndcg = result["arms"][arm]["ndcg@10"]
        assert ndcg["low"] <= ndcg["mean"] <= ndcg["high"]
    assert arm_of("v1.0123", "v1", "v2") == arm_of("v1.0123", "v1", "v2")
    assert {arm_of(f"p{i}", "v1", "v2") for i in range(50)} == {"A", "B"}
    with pytest.raises(Exception, match="no model v9"):
        compare_versions(settings, STORE, tmp_path / "registry", "v1", "v9")


def test_when_staff_call_the_store_api_then_a_key_is_needed_and_non_consenting_customers_get_the_same_404(run) -> None:
    from fastapi.testclient import TestClient

    from siloguard.clients.http import create_staff_app, new_staff_key

    settings, profiling, _, model = run
    key = new_staff_key(settings, "alice")
    assert (settings.keys.root / "staff.json").stat().st_mode & 0o777 == 0o600
    assert key not in (settings.keys.root / "staff.json").read_text()  # only its hash is kept
    client = TestClient(create_staff_app(settings, STORE, model_file=model))
    customers = _store_customers(settings)
    member = next(c for c in customers if c in profiling)
    outsider = next(c for c in customers if c not in profiling)

    assert client.post("/v1/recommendations", json={"customer": str(member)}).status_code == 401
    assert client.post("/v1/recommendations", json={"customer": str(member)},
                       headers={"Authorization": "Bearer sgs_wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    answer = client.post("/v1/recommendations", json={"customer": str(member), "k": 3}, headers=auth)
    assert answer.status_code == 200 and len(answer.json()["items"]) == 3
    assert client.post("/v1/recommendations", json={"customer": str(member), "k": 0}, headers=auth).status_code == 422
    refused = client.post("/v1/recommendations", json={"customer": str(outsider)}, headers=auth)
    unknown = client.post("/v1/recommendations", json={"customer": "99999999"}, headers=auth)
    assert refused.status_code == unknown.status_code == 404 and refused.json() == unknown.json()
    # the gate decided for the staff member the key names
    with AuditLog.open(settings, signer=False) as log:
        actors = [s.event.actor for s in log.iter_events() if s.event.purpose == PROFILING]
    assert actors[-1] == "staff:alice"


def test_when_a_customer_is_erased_then_they_leave_the_stores_campaign_records(run, tmp_path) -> None:
    import sqlalchemy as sa

    from siloguard.clients.campaign import campaign_list
    from siloguard.clients.marketing import record_campaign, staff_principal
    from siloguard.dsr.sync import erase_subject
    from siloguard.storage.orm import campaign_members

    settings, _, marketing, model = run
    raw = pd.read_csv(settings.work_dir / "stores" / f"{STORE}.csv")
    item = str(raw["StockCode"].value_counts().index[0])
    made = campaign_list(settings, STORE, item=item, top=1000, model_file=model, control=0.3, seed=1)
    members = made.members.rename(columns={"segment": "stratum"})[["customer_id", "arm", "stratum", "rank"]]
    record_campaign(settings, STORE, staff_principal(STORE), members, target=made.target, purpose=MARKETING,
                    as_of=made.as_of, send_date=made.as_of, control_share=0.3, seed=1, decision=made.decisions[0])
    customer = next(c for c in _store_customers(settings) if c in marketing)
    pseudonym = _pseudonyms(settings, [customer]).pop()
    engine = sa.create_engine(settings.database.url)
    count = sa.select(sa.func.count()).select_from(campaign_members).where(campaign_members.c.subject == pseudonym)
    with engine.connect() as conn:
        assert conn.execute(count).scalar_one() == 1

    erase_subject(settings, STORE, str(customer))

    with engine.connect() as conn:
        assert conn.execute(count).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(campaign_members)).scalar_one() == len(members) - 1
    engine.dispose()


def test_when_the_commands_run_from_the_cli_then_they_answer_and_audit_their_files(run, tmp_path) -> None:
    settings, profiling, _, model = run
    env = {"SILOGUARD_DATABASE__URL": settings.database.url, "SILOGUARD_KEYS__ROOT": str(settings.keys.root)}
    runner = CliRunner()
    where = ["--out", str(settings.work_dir)]
    member = next(c for c in _store_customers(settings) if c in profiling)

    shown = runner.invoke(app, ["store", "recommend", STORE, "--customer", str(member), "--k", "4", "--json", "--model", str(model), *where], env=env)
    assert shown.exit_code == 0, shown.output
    answer = json.loads(shown.output[shown.output.index("{"):])
    assert len(answer["items"]) == 4 and "28 days" in answer["score"]

    values = tmp_path / "clv.csv"
    result = runner.invoke(app, ["store", "clv", STORE, "--days", "30", "--csv", str(values), *where], env=env)
    assert result.exit_code == 0, result.output
    assert "expected spend in the next 30 days" in result.output and "GBP" in result.output
    assert values.stat().st_mode & 0o777 == 0o600
    assert _events(settings, "marketing.export")[-1].resource == "export:clv"

    catalogue = json.loads((settings.work_dir / "catalogue.json").read_text())["stock_codes"]
    for version, seed in (("v1", 0), ("v2", 3)):
        folder = tmp_path / "coord" / "models" / version
        folder.mkdir(parents=True)
        torch.save(SharedModel(len(catalogue), settings.model.dim, settings.model.hidden, seed=seed).state_dict(), folder / "model.pt")
        (folder / "catalogue.json").write_text(json.dumps({"stock_codes": catalogue}))
    compared = tmp_path / "compare.json"
    result = runner.invoke(app, ["model", "compare", "v1", "v2", STORE, "--registry", str(tmp_path / "coord"), "--json", str(compared), *where], env=env)
    assert result.exit_code == 0, result.output
    assert "B - A: NDCG@10" in result.output and compared.stat().st_mode & 0o777 == 0o600
    assert json.loads(compared.read_text())["arms"]["A"]["version"] == "v1"

    bad = runner.invoke(app, ["store", "campaign", "create", STORE, "--segment", "loyal", "--control", "80%", "--csv", str(tmp_path / "x.csv"), *where], env=env)
    assert bad.exit_code != 0 and "--control" in bad.output and not (tmp_path / "x.csv").exists()


def test_under_dp_the_stores_recommender_ranks_new_items_with_the_released_prior_only(run) -> None:
    import numpy as np

    from siloguard.clients.private import ReleasedPopularity, save_released_popularity
    from siloguard.privacy.popularity import popularity_prior

    settings, _, _, model = run
    dp = settings.with_overrides(privacy={"enabled": True})
    assert float(Recommender(dp, STORE, model_file=model).loaded.model.store_prior.abs().sum()) == 0.0  # nothing released
    without = Recommender(settings, STORE, model_file=model)
    assert np.allclose(without.loaded.model.store_prior.numpy(), np.log1p(without._item_customers))  # raw, without DP
    size = without.loaded.catalogue.size
    released = np.linspace(-4.0, 60.0, size)
    save_released_popularity(dp, STORE, ReleasedPopularity(7, 3.0, released), federation=True)
    prior = Recommender(dp, STORE, model_file=model).loaded.model.store_prior.numpy()
    assert np.allclose(prior, np.log1p(popularity_prior(released, 3.0)), atol=1e-5)
