"""Store sites: each store owns its file, database and keys; the coordinator works from publications.

The federation test runs the Flower simulation engine over three sites, one of them a partner
as a new user would bring it: named ``store-31782``, its file has zero-quantity rows with empty
prices and store codes in the Country column, and it declares its country in its site.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from siloguard.clients.site import Publication, StoreSite
from siloguard.config import Settings
from siloguard.errors import ComplianceError, ConfigError
from siloguard.runs import run_settings
from tests.conftest import tiny_customers, write_consent, write_tiny_retail

PARTNER = "store-31782"


def _files(tmp_path: Path) -> dict[str, Path]:
    """Three stores' own files cut from the tiny retail file; the partner's in its own shape."""
    retail = write_tiny_retail(tmp_path / "tiny.csv")
    frame = pd.read_csv(retail, dtype=str, keep_default_na=False)
    out = {}
    for store, country in (("france", "France"), ("germany", "Germany"), (PARTNER, "United Kingdom")):
        part = frame[frame["Country"] == country].copy()
        if store == PARTNER:
            part["Country"] = "ST31782"  # the partner's export carries its store code here
            extra = part.head(3).copy()
            extra["Quantity"], extra["UnitPrice"] = "0", ""  # zero-quantity lines without a price
            part = pd.concat([part, extra])
        path = tmp_path / "files" / f"{store}.csv"
        path.parent.mkdir(exist_ok=True)
        part.to_csv(path, index=False)
        out[store] = path
    return out


@pytest.fixture
def sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, StoreSite]:
    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    consent = write_consent(tmp_path / "consent.csv", tiny_customers(write_tiny_retail(tmp_path / "all.csv")))
    countries = {"france": "France", "germany": "Germany", PARTNER: "Germany"}
    return {
        store: StoreSite.init(tmp_path / "sites" / store, store, path, country=countries[store], consent=consent)
        for store, path in _files(tmp_path).items()
    }


def test_when_a_site_is_made_then_it_holds_its_own_data_keys_and_database_and_publishes_no_customer(sites, tmp_path: Path) -> None:
    partner = sites[PARTNER]
    assert partner.settings.database.url == f"sqlite:///{partner.directory / 'siloguard.db'}"
    assert (partner.directory / "keys").stat().st_mode & 0o777 == 0o700
    assert partner.silo().parent == partner.directory / "data"
    pub = Publication.read(partner.directory / "publication.json")
    assert pub.store == PARTNER and pub.country == "Germany" and pub.jurisdiction == "gdpr"
    assert pub.counts["consented"] == pub.counts["customers"] == 12
    text = (partner.directory / "publication.json").read_text()
    for customer in partner.transactions()["customer_id"].unique():
        assert str(customer) not in text
    with pytest.raises(ConfigError, match="already the site"):
        StoreSite.init(partner.directory, PARTNER, partner.silo(), country="Germany")


@pytest.mark.parametrize("name", ["Store-1", "1store", "store_1", "store12345678901", ""])
def test_when_a_store_name_is_unusable_then_init_says_how_to_name_it_and_writes_nothing(tmp_path: Path, name: str) -> None:
    retail = write_tiny_retail(tmp_path / "tiny.csv")
    with pytest.raises(ConfigError, match="lowercase letters"):
        StoreSite.init(tmp_path / "site", name, retail, country="Germany")
    assert not (tmp_path / "site").exists()


def test_when_a_country_is_unknown_then_init_refuses_it_and_accepts_iso_codes_and_any_case(tmp_path: Path) -> None:
    retail = write_tiny_retail(tmp_path / "tiny.csv")
    with pytest.raises(ConfigError, match="unknown country"):
        StoreSite.init(tmp_path / "site", "germany", retail, country="ST31782")
    assert not (tmp_path / "site").exists()
    assert StoreSite.init(tmp_path / "a", "germany", retail, country="DE").country == "DE"
    assert StoreSite.init(tmp_path / "b", "germany", retail, country="germany").country == "germany"


def test_when_the_site_is_a_file_or_a_used_directory_then_init_refuses_and_leaves_it_alone(tmp_path: Path) -> None:
    retail = write_tiny_retail(tmp_path / "tiny.csv")
    with pytest.raises(ConfigError, match="not an empty directory"):
        StoreSite.init(retail, "germany", retail, country="Germany")
    used = tmp_path / "work"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    mode = used.stat().st_mode
    with pytest.raises(ConfigError, match="not an empty directory"):
        StoreSite.init(used, "germany", retail, country="Germany")
    assert used.stat().st_mode == mode and sorted(p.name for p in used.iterdir()) == ["notes.txt"]


def test_a_partner_with_store_codes_in_its_country_column_is_refused_by_its_own_preflight_unless_it_declares_a_country(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from siloguard.clients.app import store_preflight

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT"):
        monkeypatch.delenv(name, raising=False)
    path = _files(tmp_path)[PARTNER]
    with pytest.raises(ConfigError, match="--country"):  # refused at once, before anything is written
        StoreSite.init(tmp_path / "refused", PARTNER, path, country=None)
    assert not (tmp_path / "refused").exists()
    # A site whose declaration was removed afterwards: its own pre-flight refuses to train.
    undeclared = StoreSite.init(tmp_path / "undeclared", PARTNER, path, country="Germany")
    manifest = json.loads((undeclared.directory / "site.json").read_text())
    del manifest["country"]
    (undeclared.directory / "site.json").write_text(json.dumps(manifest))
    undeclared = StoreSite.open(undeclared.directory)
    with pytest.raises(ComplianceError, match="cross-border"):
        store_preflight(undeclared, run_id=101)
    declared = StoreSite.init(tmp_path / "declared", PARTNER, path, country="Germany")
    counts = store_preflight(declared, run_id=102)
    assert counts["failed"] == 0 and counts["rules"] > 5


def test_a_federation_of_sites_trains_the_partner_and_the_coordinator_holds_nothing_of_the_stores(
    sites, tmp_path: Path
) -> None:
    from siloguard.federation.prepare import prepare_federation
    from siloguard.federation.registry import current_version, load_manifest
    from siloguard.federation.runner import run_federation

    coordinator_dir = tmp_path / "coordinator"
    base = Settings.build(
        model={"dim": 8, "hidden": 4, "cutoffs": 2, "batch_size": 16},
        federation={"rounds": 2, "min_stores": 3},
        privacy={"enabled": True, "sample_rate": 0.5, "epsilon_cap": 50.0},
        data={"test_weeks": 3},
    )
    coordinator = run_settings(coordinator_dir, base)
    publications = [Publication.read(site.directory / "publication.json") for site in sites.values()]
    prepared = prepare_federation(coordinator, publications, sites={k: s.directory for k, s in sites.items()})
    # The catalogue carries the descriptions the stores published (and no other text).
    shelf = json.loads(prepared.catalogue.read_text())["descriptions"]
    published = {code: text for p in publications for code, text in p.descriptions.items()}
    assert shelf and all(published[code] == text for code, text in shelf.items())
    run_federation(coordinator, prepared)

    manifest = load_manifest(coordinator_dir, current_version(coordinator_dir))
    assert manifest["history"][0]["participants"] == sorted(sites)
    assert PARTNER in manifest["epsilon_per_store"]

    # Each store's database holds its own consent, ledger and audit rows; the coordinator's none of theirs.
    for store, site in sites.items():
        engine = sa.create_engine(site.settings.database.url)
        with engine.connect() as conn:
            ledger = conn.execute(sa.text("select store from privacy_ledger")).scalars().all()
            consents = conn.execute(sa.text("select count(*) from consent_events")).scalar_one()
            actors = set(conn.execute(sa.text("select body from audit_events")).scalars())
        engine.dispose()
        assert ledger == [store] and consents == 12
        assert {json.loads(b)["actor"] for b in actors} <= {f"client:{store}", f"store:{store}"}
    engine = sa.create_engine(coordinator.database.url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from consent_events")).scalar_one() == 0
        assert conn.execute(sa.text("select count(*) from privacy_ledger")).scalar_one() == 0
        bodies = [json.loads(b) for b in conn.execute(sa.text("select body from audit_events")).scalars()]
    engine.dispose()
    reported = {b["related"]["store"] for b in bodies if b["action"] == "compliance.preflight" and b.get("related", {}).get("store")}
    assert reported == set(sites)  # each store's own pre-flight, as counts in its replies
    witnessed = [b for b in bodies if b["action"] == "audit.head_witnessed"]
    assert {(b["related"]["store"], b["related"]["round"]) for b in witnessed} == {(s, r) for s in sites for r in (1, 2)}
    # Every store's own log verifies against the heads the coordinator witnessed.
    from typer.testing import CliRunner

    from siloguard.cli import app

    for store, site in sites.items():
        result = CliRunner().invoke(app, [
            "audit", "verify", "--db", site.settings.database.url, "--public-key", str(site.settings.audit.public_key),
            "--witnessed", str(coordinator_dir), "--store", store,
        ])
        assert result.exit_code == 0, result.output
        assert "consistent with all 2 head(s)" in result.output
    # The model the coordinator sends back carries its catalogue: a store ranks its own
    # customers for a product from its site alone (it has no run.json of the coordinator's).
    from siloguard.clients.campaign import campaign_list
    from siloguard.clients.gating import store_consent

    partner = sites[PARTNER]
    customers_of_partner = [str(c) for c in partner.transactions()["customer_id"].unique()]
    store_consent(partner.settings, PARTNER).record(customers_of_partner, "marketing.advertising.first_party.targeted",
                                                    "grant", source="store")
    item = str(partner.transactions()["stock_code"].value_counts().index[0])
    ranked = campaign_list(partner.settings, PARTNER, item=item, top=5, model_file=coordinator_dir / "model" / "model.pt")
    assert len(ranked.frame) == 5
    # No store key, silo row or customer id in the coordinator's directory.
    files = [p for p in coordinator_dir.rglob("*") if p.is_file()]
    assert not any("keys" in p.parts for p in files)
    customers = {str(c) for site in sites.values() for c in site.transactions()["customer_id"].unique()}
    for path in files:
        if path.suffix in (".json", ".csv", ".txt"):
            # Whole tokens, after removing decimal numbers: a metric such as 0.3126801 holds the
            # digits of a customer number without naming anyone (the DP noise varies them per run).
            text = re.sub(r"\d+\.\d+(?:[eE][-+]?\d+)?", " ", path.read_text(errors="replace"))
            named = customers & set(re.findall(r"\w+", text))
            assert not named, (path, sorted(named)[:3])


def test_a_product_line_that_names_one_customer_is_not_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT"):
        monkeypatch.delenv(name, raising=False)
    retail = write_tiny_retail(tmp_path / "tiny.csv")
    frame = pd.read_csv(retail, dtype=str, keep_default_na=False)
    note = frame.iloc[[0]].copy()
    note["StockCode"], note["Description"] = "M", "Manual: refund to John Smith, 12 High Street, Leeds"
    pd.concat([frame, note]).to_csv(retail, index=False)
    site = StoreSite.init(tmp_path / "site", "germany", retail, country="Germany")
    text = (site.directory / "publication.json").read_text()
    assert "John Smith" not in text and "High Street" not in text
    pub = Publication.read(site.directory / "publication.json")
    assert "M" in pub.products and "M" not in pub.descriptions  # the code is public, the note is not
    assert pub.descriptions  # products many customers bought keep their descriptions


def test_a_product_is_published_under_its_most_frequent_description_the_first_of_a_tie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT"):
        monkeypatch.delenv(name, raising=False)
    site = StoreSite.init(tmp_path / "site", "germany", write_tiny_retail(tmp_path / "tiny.csv"), country="Germany")
    frame = site.transactions()
    code = str(frame["stock_code"].value_counts().index[0])
    rows = frame.index[frame["stock_code"].astype(str) == code]
    assert len(rows) >= 4
    frame.loc[rows, "description"] = "B USUAL NAME"
    frame.loc[rows[:1], "description"] = "A RARE NAME"
    assert site.publication(frame).descriptions[code] == "B USUAL NAME"
    even = rows[: len(rows) // 2 * 2]
    tie = frame.drop(rows.difference(even))
    tie.loc[even[: len(even) // 2], "description"] = "D SECOND"
    tie.loc[even[len(even) // 2 :], "description"] = "C FIRST"
    assert site.publication(tie).descriptions[code] == "C FIRST"
