"""Campaign lists and segments go through the gate: consent, pseudonyms, export policy."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.clients.campaign import campaign_list, store_segments
from siloguard.clients.gating import store_keys
from siloguard.config import Settings
from siloguard.data.profiles import generate_profiles
from siloguard.errors import ConfigError
from siloguard.federation.runner import prepare_run
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.recommender.model import SharedModel
from tests.conftest import tiny_customers, write_consent

MARKETING = "marketing.advertising.first_party.targeted"


@pytest.fixture
def run(tmp_path, tiny_retail, tiny_settings: Settings) -> tuple[Settings, list[int]]:
    """Everyone consents to profiling; every other customer also to marketing."""
    customers = tiny_customers(tiny_retail)
    marketing = customers[::2]
    both = pd.concat(
        [pd.read_csv(tiny_settings.data.consent), pd.read_csv(write_consent(tmp_path / "m.csv", marketing, purpose=MARKETING))]
    )
    both.to_csv(tmp_path / "both.csv", index=False)
    settings = tiny_settings.with_overrides(data={"consent": tmp_path / "both.csv"})
    prepare_run(settings)
    return settings, marketing


def _pseudonyms(settings: Settings, store: str, ids) -> set[str]:
    p = Pseudonymiser(store_keys(settings, store))
    return {p.pseudonym(c) for c in ids}


def _store_customers(settings: Settings, store: str) -> list[int]:
    frame = pd.read_csv(settings.work_dir / "stores" / f"{store}.csv")
    return sorted({int(float(c)) for c in frame["CustomerID"]})


def test_when_a_segment_list_is_made_then_only_marketing_consents_are_in_it(run) -> None:
    settings, marketing = run
    customers = _store_customers(settings, "united-kingdom")
    result = campaign_list(settings, "united-kingdom", segment="champions", top=1000)

    allowed = _pseudonyms(settings, "united-kingdom", set(customers) & set(marketing))
    assert set(result.frame["customer_id"]) <= allowed
    assert result.consented == len(allowed)
    assert list(result.frame["rank"]) == list(range(1, len(result.frame) + 1))
    assert (result.frame["segment"] == "champions").all()
    assert result.frame["score"].is_monotonic_decreasing
    # Segments for reporting cover every customer (legitimate interests, no consent needed).
    segments = store_segments(settings, "united-kingdom")
    assert set(segments["customer_id"]) == _pseudonyms(settings, "united-kingdom", customers)


def test_when_a_product_list_is_made_then_every_row_has_one_comparable_score(run, tmp_path) -> None:
    settings, marketing = run
    raw = pd.read_csv(settings.work_dir / "stores" / "france.csv")
    item = raw["StockCode"].value_counts().index[0]
    catalogue = __import__("json").loads((settings.work_dir / "catalogue.json").read_text())["stock_codes"]
    model = SharedModel(len(catalogue), settings.model.dim, settings.model.hidden)
    torch.save(model.state_dict(), tmp_path / "model.pt")

    result = campaign_list(settings, "france", item=item, top=1000, model_file=tmp_path / "model.pt")

    buyers = {int(float(c)) for c in raw.loc[raw["StockCode"] == item, "CustomerID"]}
    expect_past = _pseudonyms(settings, "france", buyers & set(marketing))
    past = result.frame[result.frame["basis"] == "past_buyer"]
    assert set(past["customer_id"]) == expect_past
    # One scale for past buyers and model picks: a probability, the list sorted by it.
    assert result.frame["score"].between(0, 1).all()
    assert result.frame["score"].is_monotonic_decreasing
    assert (result.frame["product"] == str(item)).all() and (result.frame["currency"] == "GBP").all()
    assert result.frame["as_of"].nunique() == 1


def test_when_profiles_are_joined_then_contacts_leave_only_where_the_policy_allows(run, tmp_path) -> None:
    settings, marketing = run
    profiles = {}
    for store in ("france", "germany"):
        ids = _store_customers(settings, store)
        frame = generate_profiles(pd.Series("France" if store == "france" else "Germany", index=pd.Index(ids, name="customer_id")))
        frame.to_csv(tmp_path / f"{store}.csv", index=False)
        profiles[store] = frame

    fr = campaign_list(settings, "france", segment="champions", top=1000, profiles=tmp_path / "france.csv")
    de = campaign_list(settings, "germany", segment="champions", top=1000, profiles=tmp_path / "germany.csv")

    assert {"name", "email", "city", "country"} <= set(fr.frame.columns)
    assert "email" not in de.frame.columns  # germany: emails leave only through its own mailer (policy.csv)
    for result, store in ((fr, "france"), (de, "germany")):
        assert not {"phone", "street_address", "postcode", "birth_date", "locale"} & set(result.frame.columns)
        # Canary: no contact detail of a customer without marketing consent is in the list.
        refused = profiles[store][~profiles[store]["customer_id"].isin(marketing)]
        text = result.frame.to_csv(index=False)
        assert not any(e in text for e in refused["email"]) and not any(n in text for n in refused["name"])
        assert len(result.decisions) == 2


def test_when_the_request_is_ambiguous_or_unknown_then_it_is_refused(run) -> None:
    settings, _ = run
    with pytest.raises(ConfigError, match="either a segment"):
        campaign_list(settings, "france", segment="champions", item="SKU001")
    with pytest.raises(ConfigError, match="unknown segment"):
        campaign_list(settings, "france", segment="whales")


def test_when_consent_is_imported_from_the_cli_then_bad_lines_are_named_and_nothing_is_written(run, tmp_path) -> None:
    settings, _ = run
    bad = tmp_path / "bad.csv"
    write_consent(bad, [12000, 12001], event="grant")
    frame = pd.read_csv(bad)
    frame.loc[1, "event"] = "maybe"
    frame.to_csv(bad, index=False)
    env = {"SILOGUARD_DATABASE__URL": settings.database.url, "SILOGUARD_KEYS__ROOT": str(settings.keys.root)}
    result = CliRunner().invoke(app, ["consent", "import", str(bad), "--out", str(settings.work_dir)], env=env)
    assert result.exit_code == 3
    assert "line 3, column event" in result.output
    assert "12001" not in result.output

    out = tmp_path / "list.csv"
    result = CliRunner().invoke(
        app, ["store", "campaign", "create", "france", "--segment", "loyal", "--csv", str(out), "--out", str(settings.work_dir)], env=env
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o077 == 0
    assert list(pd.read_csv(out).columns) == ["customer_id", "rank", "segment", "basis", "score", "spend", "currency", "as_of"]


def test_when_the_consent_state_was_changed_then_rebuild_state_restores_it_from_the_events(run) -> None:
    import sqlalchemy as sa

    from siloguard.policies.consent import ConsentRegistry

    settings, _ = run
    registry = ConsentRegistry(settings.database.url)
    try:
        assert registry.state_differences()["rows"] > 0
        with registry.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM consent_state WHERE purpose = 'personalize.profiling'"))
        broken = registry.state_differences()
        assert broken["missing"] > 0
        env = {"SILOGUARD_DATABASE__URL": settings.database.url, "SILOGUARD_KEYS__ROOT": str(settings.keys.root)}
        result = CliRunner().invoke(app, ["consent", "rebuild-state", "--out", str(settings.work_dir)], env=env)
        assert result.exit_code == 0, result.output
        assert f"{broken['missing']:,} missing or wrong" in result.output
        assert registry.state_differences()["missing"] == registry.state_differences()["extra"] == 0
    finally:
        registry.close()
