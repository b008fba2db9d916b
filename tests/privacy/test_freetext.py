"""The free-text recognizers: the shipped NER model offline, patterns, the build recipe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from siloguard.data import freetext as recipe
from siloguard.privacy import freetext
from siloguard.privacy.keys import StoreKeys
from siloguard.privacy.masking import Masker


@pytest.fixture(scope="module")
def offline_masker(tmp_path_factory: pytest.TempPathFactory) -> Masker:
    """One masker (the model loads once per module) built with the network cut off."""
    from siloguard.privacy.keys import FileKeyStore

    mp = pytest.MonkeyPatch()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket, "create_connection", no_network)
    tmp = tmp_path_factory.mktemp("freetext")
    keys = StoreKeys(FileKeyStore(tmp / "keys"), "canary-store")
    keys.init()
    masker = Masker.for_store(keys, cache_dir=tmp / "cache")
    masker.scan_texts(pd.Series(["warm up"]))  # loads the model while the network is cut
    mp.undo()
    assert not (tmp / "cache").exists() or not list((tmp / "cache").glob("spacy-blank-*")), "the shipped model, not a blank pipeline"
    return masker


def test_when_model_shipped_then_it_is_small_and_records_its_recipe() -> None:
    path = freetext.model_path()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size < 8_000_000
    recipe = (path / "recipe.json").read_text()
    assert "training_digest" in recipe and "siloguard.data.freetext build" in recipe


def test_when_free_text_holds_canary_name_address_and_date_then_all_are_replaced(offline_masker: Masker) -> None:
    texts = pd.Series(
        [
            "Please call Zebediah Quarrington about his order before Friday.",
            "Deliver to 42 Larkspur Road, Sheffield S11 8YT, leave with the neighbour.",
            "Customer rang on 14 March 2025 about the broken teapot.",
            "Account holder Maud Featherstonehaugh, aged 71, SSN 219-09-9999.",
        ]
    )
    out, found = offline_masker.scan_texts(texts)
    assert "Zebediah" not in out[0] and "Quarrington" not in out[0] and "<PERSON>" in out[0]
    assert "Larkspur" not in out[1] and "<STREET_ADDRESS>" in out[1]
    assert "14 March 2025" not in out[2] and "<DATE_TIME>" in out[2] and "teapot" in out[2]
    assert "Featherstonehaugh" not in out[3] and "71" not in out[3] and "219-09-9999" not in out[3]
    assert found["PERSON"] >= 2 and found["DATE_TIME"] >= 1 and found["AGE"] == 1 and found["US_SSN"] == 1


def test_when_product_descriptions_scanned_then_they_pass_unchanged(offline_masker: Masker) -> None:
    texts = pd.Series(
        [
            "WHITE HANGING HEART T-LIGHT HOLDER",
            "REGENCY CAKESTAND 3 TIER",
            "JUMBO BAG RED RETROSPOT",
            "PACK OF 72 RETROSPOT CAKE CASES",
            "SET OF 3 CAKE TINS PANTRY DESIGN",
            "PARTY BUNTING",
        ]
    )
    out, found = offline_masker.scan_texts(texts)
    assert out.tolist() == texts.tolist() and not found


def test_when_undeclared_column_holds_dates_or_towns_only_then_no_evidence(offline_masker: Masker) -> None:
    assert offline_masker.pii_evidence("InvoiceDate", pd.Series(["2011-01-03 09:00:00", "2011-02-14 12:30:00"])) == []
    assert offline_masker.pii_evidence("segment", pd.Series(["gold", "silver", "bronze"])) == []
    assert "PERSON" in "; ".join(offline_masker.pii_evidence("notes", pd.Series(["ask for Zebediah Quarrington at the desk"])))


@pytest.mark.parametrize(
    ("text", "entity", "span"),
    [
        ("arrived 03/11/2024 at 14:30", "DATE_TIME", "03/11/2024 at 14:30"),
        ("due 2025-01-09", "DATE_TIME", "2025-01-09"),
        ("see you on Tuesday", "DATE_TIME", "Tuesday"),
        # families, not single shapes: any of - / . between numeric parts, apostrophe years,
        # ordinals on either side of the month
        ("posted 2023/11/04 by hand", "DATE_TIME", "2023/11/04"),
        ("posted 2023.11.04 by hand", "DATE_TIME", "2023.11.04"),
        ("posted 04-11-2023 by hand", "DATE_TIME", "04-11-2023"),
        ("joined Nov '23, left in March", "DATE_TIME", "Nov '23"),
        ("joined NOVEMBER 2023", "DATE_TIME", "NOVEMBER 2023"),
        ("booked for March the 3rd", "DATE_TIME", "March the 3rd"),
        ("booked for the 3rd of March, 2023", "DATE_TIME", "3rd of March, 2023"),
        ("expires 14-Feb-23", "DATE_TIME", "14-Feb-23"),
        ("she is 34 years old", "AGE", "34"),
        ("patient aged 81", "AGE", "81"),
        ("SSN: 123456789 on file", "US_SSN", "123456789"),
    ],
)
def test_when_pattern_matches_then_span_is_the_value(text: str, entity: str, span: str) -> None:
    rec = {"DATE_TIME": freetext.date_time_recognizer, "AGE": freetext.age_recognizer, "US_SSN": freetext.ssn_context_recognizer}[entity]()
    found = {text[r.start : r.end] for r in rec.analyze(text, [entity])}
    assert span in found


@pytest.mark.parametrize(
    "text",
    [
        "PACK OF 72 RETROSPOT CAKE CASES",
        "SET 3 RETROSPOT TEA/COFFEE/SUGAR",
        "10 COLOUR SPACEBOY PEN",
        "3 years warranty",
        "MAY FAIR",
        "SET/6 RED SPOTTY PAPER CUPS",
        "2011.5 kg",
        "mixed 12/25 units",
    ],
)
def test_when_no_date_or_age_then_patterns_find_nothing(text: str) -> None:
    for rec in (freetext.date_time_recognizer(), freetext.age_recognizer(), freetext.ssn_context_recognizer()):
        assert rec.analyze(text, []) == []


def test_when_recipe_seeded_then_training_sentences_are_deterministic() -> None:
    a = recipe.training_sentences(300, seed=7)
    b = recipe.training_sentences(300, seed=7)
    c = recipe.training_sentences(300, seed=8)
    assert a == b and recipe.digest(a) == recipe.digest(b) != recipe.digest(c)
    labelled = [(text[s:e], label) for text, spans in a for s, e, label in spans]
    assert {label for _, label in labelled} == set(freetext.NER_LABELS)
    assert all(value == value.strip() and value for value, _ in labelled)
    assert sum(1 for _, spans in a if not spans) > 60  # PII-free negatives are part of the recipe


def test_when_recipe_runs_in_another_process_then_sentences_do_not_depend_on_hash_seed() -> None:
    """Faker's it_IT city list comes from a set; the recipe sorts it, or str hashing would leak in."""
    code = "from siloguard.data.freetext import training_sentences, digest; print(digest(training_sentences(400, 3)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert other.stdout.strip() == recipe.digest(recipe.training_sentences(400, 3))
