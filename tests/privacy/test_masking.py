from __future__ import annotations

import re
import socket
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from presidio_anonymizer.operators import Decrypt

from siloguard.errors import ConfigError
from siloguard.privacy.keys import FileKeyStore, StoreKeys
from siloguard.privacy.masking import MASKING_PATH, Masker, load_masking_config


@pytest.mark.parametrize(
    ("category", "values", "expected"),
    [
        ("user.name", ["Ann Lee", None, "Bo Chen"], ["<NAME>", None, "<NAME>"]),
        ("user.contact.phone_number", ["+44 20 7946 0958"], ["****************"]),
        ("user.contact.address.postal_code", ["SW1A 1AA", "75008"], ["SW1A ***", "75***"]),
        ("user.demographic.date_of_birth", [date(1987, 4, 12)], ["1987-*****"]),
        ("user.contact.address.street", ["1 High St"], [""]),
        ("user.contact.address.city", ["Leeds"], ["<CITY>"]),
        ("user.demographic.gender", ["f"], [""]),  # no entry: falls back to user -> redact
    ],
)
def test_when_declared_column_masked_then_category_operator_applies_and_nulls_stay(
    masker: Masker, category: str, values: list[object], expected: list[object]
) -> None:
    out, n = masker.mask_column(pd.Series(values), category)
    assert out.tolist() == expected
    assert n == sum(v is not None for v in values)


def test_when_email_hashed_then_keyed_per_store_and_equal_values_stay_equal(masker: Masker, keystore: FileKeyStore, nlp_cache: Path) -> None:
    out, _ = masker.mask_column(pd.Series(["a@example.com", "b@example.com", "a@example.com"]), "user.contact.email")
    assert out[0] == out[2] != out[1]
    assert re.fullmatch(r"[0-9a-f]{64}", out[0])
    other = StoreKeys(keystore, "germany")
    other.init()
    out_other, _ = Masker.for_store(other, cache_dir=nlp_cache).mask_column(pd.Series(["a@example.com"]), "user.contact.email")
    assert out_other[0] != out[0]


def test_when_category_uses_encrypt_then_presidio_decrypt_recovers_and_ciphertexts_differ(store_keys: StoreKeys, tmp_path: Path, nlp_cache: Path) -> None:
    config = tmp_path / "masking.yaml"
    config.write_text(MASKING_PATH.read_text().replace("user.contact.email: {operator: hash, hash_type: sha256}", "user.contact.email: {operator: encrypt}"))
    masker = Masker.for_store(store_keys, config=load_masking_config(config), cache_dir=nlp_cache)
    out, n = masker.mask_column(pd.Series(["a@example.com", "a@example.com"]), "user.contact.email")
    assert n == 2 and out[0] != out[1] and "example" not in out[0]
    key = store_keys.derived("masking-encrypt").reveal()
    assert Decrypt().operate(out[0], {"key": key}) == "a@example.com"


def test_when_free_text_scanned_then_findings_replaced_and_counted_per_row(masker: Masker) -> None:
    texts = pd.Series(
        [
            "WHITE HANGING HEART T-LIGHT HOLDER",
            "call ann on +44 20 7946 0958 or ann.lee@example.com",
            None,
            "call ann on +44 20 7946 0958 or ann.lee@example.com",
            "card 4111 1111 1111 1111",
        ]
    )
    out, found = masker.scan_texts(texts)
    assert out[0] == texts[0] and out[2] is None
    assert out[1] == out[3] == "call <PERSON> on <PHONE_NUMBER> or <EMAIL_ADDRESS>"  # the shipped NER model finds "ann"
    assert out[4] == "card <CREDIT_CARD>"
    assert found["EMAIL_ADDRESS"] == 2 and found["PHONE_NUMBER"] == 2 and found["CREDIT_CARD"] == 1 and found["PERSON"] == 2


def test_when_scanning_offline_then_no_network_is_used_and_pipeline_is_cached(store_keys: StoreKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cache = tmp_path / "cache"
    # patterns only (no shipped NER model): a blank pipeline is made in the cache, once
    # (the shipped model offline: tests/privacy/test_freetext.py)
    path = tmp_path / "masking.yaml"
    text = MASKING_PATH.read_text()
    text = re.sub(r"\n  ner_model: shipped\n", "\n", text)
    text = re.sub(r"\n    NerRecognizer:\n      supported_entities: \[[^\]]*\]\n", "\n", text)
    path.write_text(text)
    config = load_masking_config(path)
    assert config.ner_model is None and "NerRecognizer" not in config.recognizers
    masker = Masker.for_store(store_keys, config=config, cache_dir=cache)
    out, found = masker.scan_texts(pd.Series(["mail ann@example.co.uk today"]))
    assert out[0] == "mail <EMAIL_ADDRESS> today" and found["EMAIL_ADDRESS"] == 1
    pipelines = list(cache.glob("spacy-blank-en-*"))
    assert len(pipelines) == 1 and (pipelines[0] / "config.cfg").is_file()
    Masker.for_store(store_keys, config=config, cache_dir=cache).scan_texts(pd.Series(["x"]))  # reuses it
    assert list(cache.glob("spacy-blank-en-*")) == pipelines


@pytest.mark.parametrize(
    ("name", "values", "found"),
    [
        ("contact", ["ann@example.com", "bo@example.org"], "EMAIL_ADDRESS in 2"),
        ("full_name", ["Ann Lee", "Bo Chen"], "its name suggests name"),
        ("customerPhone", ["n/a"], "its name suggests phone"),
        ("extra", ["+44 20 7946 0958", "nothing", "nothing"], "PHONE_NUMBER in 1 of 3 sampled values"),
    ],
)
def test_when_undeclared_column_looks_personal_then_evidence_names_kind_not_value(masker: Masker, name: str, values: list[str], found: str) -> None:
    evidence = "; ".join(masker.pii_evidence(name, pd.Series(values)))
    assert found in evidence
    for value in values:
        assert value not in evidence or value in ("n/a", "nothing")


def test_when_undeclared_column_is_plain_then_no_evidence(masker: Masker) -> None:
    assert masker.pii_evidence("basket_size", pd.Series([1, 2, 3, None])) == []
    assert masker.pii_evidence("segment", pd.Series(["gold", "silver"])) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("user: {operator: redact}", "user: {operator: shred}", "unknown operator 'shred'"),
        ("user: {operator: redact}", "users: {operator: redact}", "fallback operator"),
        ("user.contact.email: {operator: hash, hash_type: sha256}", "user.contact.email: {operator: hash, salt: abcdefghijklmnopqrstuvwxyz}", "keys come from the store's key store"),
        ('"NO", ', "NO, ", "quoted two-letter region codes"),
        ("EmailRecognizer: {}", "NameRecognizer: {}", "unknown recognizer"),
        ("  ner_model: shipped\n", "", "needs free_text.ner_model"),
        ("ner_model: shipped", "ner_model: en_core_web_lg", "expected 'shipped'"),
    ],
)
def test_when_masking_config_is_bad_then_load_fails_naming_key(tmp_path: Path, old: str, new: str, problem: str) -> None:
    path = tmp_path / "masking.yaml"
    text = MASKING_PATH.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_masking_config(path)


def test_when_mask_parameters_invalid_then_masker_refuses(store_keys: StoreKeys, tmp_path: Path) -> None:
    path = tmp_path / "masking.yaml"
    path.write_text(MASKING_PATH.read_text().replace('masking_char: "*", chars_to_mask: 100', 'masking_char: "**", chars_to_mask: 100'))
    with pytest.raises(ConfigError, match="categories.user.contact.phone_number: invalid parameters"):
        Masker.for_store(store_keys, config=load_masking_config(path))
