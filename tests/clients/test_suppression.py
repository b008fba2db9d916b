"""Erased customers stay erased: a store's suppression list outlives re-preparing the run.

Finding 06 of the security test: erasing a customer in a store, then preparing the run again
from the same source (which re-cuts the silos and re-imports the consent file), put the
customer's rows back into the store's silo and their pseudonym back into its segments. The
store's suppression list (``store_suppressions``, keyed references, no ids) now keeps them out
of silo preparation, the gate of every flow and consent import.

These tests use the embedded sample (``prepare_run`` with no data path: its own consent file
grants most customers). ``store_suppression`` is read through the module so this file still
imports where it does not exist (the code before the fix), and the main test fails there on
the behaviour itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from siloguard.clients import gating
from siloguard.clients.campaign import MARKETING, campaign_list, store_segments
from siloguard.clients.gating import TRAINING_PURPOSE, gated_training_frame, store_consent, store_keys
from siloguard.config import Settings
from siloguard.data.loader import load_clean, sample_consent_path, sample_path
from siloguard.dsr.sync import erase_subject
from siloguard.federation.runner import prepare_run
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.recommender.segments import SEGMENTS

STORE = "germany"  # a small store of the embedded sample (30 customers)


def _ids(column: pd.Series) -> pd.Series:
    """Customer ids as text, ``17850.0`` and ``17850`` alike."""
    return column.astype(str).str.strip().str.replace(r"\.0$", "", regex=True)


def _silo(settings: Settings, store: str = STORE) -> pd.DataFrame:
    return pd.read_csv(settings.work_dir / "stores" / f"{store}.csv", dtype=str, keep_default_na=False)


def _live(settings: Settings, purpose: str, ids: list[str], store: str = STORE) -> set[str]:
    return store_consent(settings, store).subjects_with_basis(purpose, ids, datetime.now(UTC))


def _training_pseudonyms(settings: Settings, store: str = STORE) -> set[str]:
    frame, _ = load_clean(settings.work_dir / "stores" / f"{store}.csv")
    return set(gated_training_frame(settings, store, frame).frame["customer_id"])


def _campaign_pseudonyms(settings: Settings, store: str = STORE) -> set[str]:
    """Everyone on any segment's campaign list (a customer's segment may move when the store changes)."""
    return set().union(*(set(campaign_list(settings, store, segment=s, top=10_000).frame["customer_id"]) for s in SEGMENTS))


def _traces(settings: Settings, customer: str, store: str = STORE) -> dict[str, bool]:
    """Where in the store the customer shows up."""
    pseudonym = Pseudonymiser(store_keys(settings, store)).pseudonym(customer)
    return {
        "silo file": customer in set(_ids(_silo(settings, store)["CustomerID"])),
        "training frame": pseudonym in _training_pseudonyms(settings, store),
        "store segments": pseudonym in set(store_segments(settings, store)["customer_id"]),
        "campaign lists": pseudonym in _campaign_pseudonyms(settings, store),
        "profiling consent": customer in _live(settings, TRAINING_PURPOSE, [customer], store),
        "marketing consent": customer in _live(settings, MARKETING, [customer], store),
    }


@pytest.fixture
def sample_settings(tmp_path: Path) -> Settings:
    """The embedded sample (and its consent file), with work dir, keys and SQLite database in tmp_path."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    return Settings.build(
        work_dir=tmp_path / "work",
        keys={"root": keys},
        database={"url": f"sqlite:///{tmp_path / 'siloguard.db'}"},
        privacy={"enabled": False},
    )


@pytest.fixture
def prepared(sample_settings: Settings):  # noqa: ANN201 - (settings, first PreparedRun, erased, control)
    """A prepared run and two customers of the store, both with rows and live profiling and marketing consent."""
    first = prepare_run(sample_settings)
    assert sample_settings.data.path is None  # the embedded sample and its consent file
    rows = _ids(_silo(sample_settings)["CustomerID"]).value_counts()
    ids = sorted(rows.index)
    both = _live(sample_settings, TRAINING_PURPOSE, ids) & _live(sample_settings, MARKETING, ids)
    chosen = sorted(both, key=lambda c: (-int(rows[c]), c))  # the most rows first: the most to bring back
    assert len(chosen) >= 2, f"store {STORE}: fewer than two customers consent to profiling and marketing"
    return sample_settings, first, chosen[0], chosen[1]


def test_finding_06_re_preparing_a_run_does_not_bring_an_erased_customer_back(prepared) -> None:
    settings, first, erased, control = prepared
    everywhere = dict.fromkeys(_traces(settings, control), True)
    assert _traces(settings, erased) == everywhere  # the test could see them come back
    assert _traces(settings, control) == everywhere
    rows_before = int((_ids(_silo(settings)["CustomerID"]) == erased).sum())

    outcome = erase_subject(settings, STORE, erased)
    assert (outcome.rows_erased, outcome.rows_remaining) == (rows_before, 0)

    again = prepare_run(settings)  # same source, same consent file (re-imported)

    # Still in the source: only the store's suppression list keeps them out.
    source = pd.read_csv(sample_path(), dtype=str, keep_default_na=False)
    assert erased in set(_ids(source["CustomerID"]))
    consent_file = pd.read_csv(sample_consent_path(), dtype=str, keep_default_na=False)
    assert erased in set(_ids(consent_file["customer_id"]))

    found = {where: seen for where, seen in _traces(settings, erased).items() if seen}
    assert found == {}, f"the erased customer came back in: {', '.join(found)}"
    assert _traces(settings, control) == everywhere
    assert again.customers[STORE] == first.customers[STORE] - 1
    assert again.consented[STORE] == first.consented[STORE] - 1
    # Other stores are untouched (the same customer id in another store is another person's record there).
    assert {s: n for s, n in again.customers.items() if s != STORE} == {s: n for s, n in first.customers.items() if s != STORE}


def test_when_an_erased_customer_is_in_a_consent_file_then_the_import_skips_them_and_says_so(prepared) -> None:
    from siloguard.policies.consent import ConsentRegistry
    from siloguard.policies.consent_io import import_consent, read_consent_file

    settings, _, erased, control = prepared
    erase_subject(settings, STORE, erased)
    consents = read_consent_file(sample_consent_path(), [STORE])
    theirs = int((consents["customer_id"].astype(str) == erased).sum())
    assert theirs >= 2  # a profiling and a marketing grant at least

    registry = ConsentRegistry(settings.database.url)
    try:
        result = import_consent(registry, consents, {STORE: store_keys(settings, STORE)})
    finally:
        registry.close()

    assert result.suppressed == theirs
    assert result.events[STORE] == len(consents) - theirs
    assert _live(settings, TRAINING_PURPOSE, [erased, control]) == {control}
    assert _live(settings, MARKETING, [erased, control]) == {control}


def test_when_a_customer_is_erased_then_the_suppression_list_holds_a_keyed_reference_not_their_id(prepared) -> None:
    from siloguard.storage.orm import store_suppressions

    settings, _, erased, control = prepared
    erase_subject(settings, STORE, erased)
    erase_subject(settings, STORE, erased)  # idempotent: one entry

    suppression = gating.store_suppression(settings, STORE)
    assert len(suppression) == 1
    assert suppression.suppressed([erased, f"{erased}.0", control]) == {erased, f"{erased}.0"}
    assert gating.store_suppression(settings, "france").suppressed([erased]) == set()  # per store

    engine = sa.create_engine(settings.database.url)
    try:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(store_suppressions)).mappings()]
    finally:
        engine.dispose()
    assert [r["store"] for r in rows] == [STORE]
    text = repr(rows)
    assert erased not in text  # neither 17850 nor 17850.0 (a 40-hex-digit ref holds 5 digits by chance ~1e-4)


def test_when_an_erased_customers_rows_reach_the_silo_again_then_the_gate_drops_them(prepared) -> None:
    """Even with their rows back in the silo (an old copy restored) and a consent recorded again."""
    settings, _, erased, control = prepared
    silo = _silo(settings)
    theirs = silo[_ids(silo["CustomerID"]) == erased]
    erase_subject(settings, STORE, erased)
    pd.concat([_silo(settings), theirs]).to_csv(settings.work_dir / "stores" / f"{STORE}.csv", index=False)
    store_consent(settings, STORE).record([erased], TRAINING_PURPOSE, "grant", source="store")

    frame, _ = load_clean(settings.work_dir / "stores" / f"{STORE}.csv")
    gated = gated_training_frame(settings, STORE, frame)

    pseudonymiser = Pseudonymiser(store_keys(settings, STORE))
    assert pseudonymiser.pseudonym(erased) not in set(gated.frame["customer_id"])
    assert pseudonymiser.pseudonym(control) in set(gated.frame["customer_id"])
    assert gated.event["counts"]["rows_suppressed"] == int((frame["customer_id"].astype(str) == erased).sum()) > 0
    assert pseudonymiser.pseudonym(erased) not in set(store_segments(settings, STORE)["customer_id"])
