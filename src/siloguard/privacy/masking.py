"""Mask personal data with Presidio, by declared category or by pattern scan, offline.

Three jobs, configured in ``masking.yaml`` next to this module:

* **Declared columns** (treatment ``mask`` in a data map) get the Presidio anonymizer
  operator chosen for their data category, a whole column at a time: no analysis per cell.
  ``redact`` and ``replace`` give the same output for every input, so the operator runs once
  per column; ``mask`` and ``hash`` run once per distinct value; ``encrypt`` runs per cell
  (a fresh IV each time, so equal values do not give equal ciphertexts).
* **Free-text columns** (treatment ``scan``) are searched with Presidio recognizers
  (:class:`presidio_analyzer.BatchAnalyzerEngine`, once per distinct text): patterns, and the
  project's own small NER model for names, places, addresses and organisations
  (:mod:`siloguard.privacy.freetext`); findings are replaced with ``AnonymizerEngine``.
* **Undeclared columns**: a sample is scanned the same way and the column name is compared
  with hint words; :meth:`Masker.pii_evidence` says why a column looks like personal data.

Offline: Presidio would download a spaCy model; it is given the NER pipeline shipped in the
package (``free_text.ner_model: shipped``), or without one a blank English pipeline saved in a
cache directory (created once, never downloaded), both as paths on disk, and tldextract (used by the
email recognizer) is switched to its bundled public-suffix snapshot with no fetching.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from siloguard._dotted import ancestors
from siloguard._yaml import YamlDoc
from siloguard.errors import ConfigError
from siloguard.privacy.keys import Secret, StoreKeys

__all__ = [
    "MASKING_PATH",
    "Masker",
    "MaskingConfig",
    "OperatorChoice",
    "blank_pipeline",
    "configure_offline",
    "default_cache_dir",
    "load_masking_config",
]

log = logging.getLogger(__name__)

MASKING_PATH = Path(__file__).with_name("masking.yaml")
OPERATORS = ("redact", "replace", "mask", "hash", "encrypt")
_CONSTANT_OPERATORS = {"redact", "replace"}  # output independent of the input text
_RECOGNIZERS = (
    "EmailRecognizer",
    "PhoneRecognizer",
    "PossiblePhoneRecognizer",
    "CreditCardRecognizer",
    "IbanRecognizer",
    "IpRecognizer",
    "UrlRecognizer",
    "CryptoRecognizer",
    "MacAddressRecognizer",
    "UkNinoRecognizer",
    "UsSsnRecognizer",
    # siloguard.privacy.freetext: the shipped NER model (Presidio's SpacyRecognizer over it,
    # needs free_text.ner_model) and pattern recognizers with their own context words
    "NerRecognizer",
    "DateTimeRecognizer",
    "AgeRecognizer",
    "SsnContextRecognizer",
)
_FREETEXT_FACTORIES = {
    "NerRecognizer": "ner_recognizer",
    "DateTimeRecognizer": "date_time_recognizer",
    "AgeRecognizer": "age_recognizer",
    "SsnContextRecognizer": "ssn_context_recognizer",
}


@dataclass(frozen=True)
class OperatorChoice:
    operator: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MaskingConfig:
    path: Path
    categories: Mapping[str, OperatorChoice]
    language: str
    score_threshold: float
    batch_size: int
    recognizers: Mapping[str, Mapping[str, Any]]
    entity_operators: Mapping[str, OperatorChoice]
    sample_size: int
    min_hits: int
    name_hints: frozenset[str]
    ner_model: str | None = None
    not_evidence: frozenset[str] = frozenset()

    def operator_for(self, category: str) -> OperatorChoice:
        for key in ancestors(category):
            if key in self.categories:
                return self.categories[key]
        raise ConfigError(f"{self.path}: no masking operator covers category {category!r}; add one under categories")


def _plain(node: Any) -> Any:
    """A small YAML value as Python data (scalars typed by YAML's safe rules)."""
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def _operator(doc: YamlDoc, node: Any, key: str) -> OperatorChoice:
    params = {}
    name = None
    for k, k_node, v_node in doc.mapping(node, key):
        if k == "operator":
            name = doc.string(v_node, f"{key}.operator")
            if name not in OPERATORS:
                doc.fail(v_node, f"{key}.operator", f"unknown operator {name!r}; expected one of {', '.join(OPERATORS)}")
        elif k in ("salt", "key"):
            doc.fail(k_node, f"{key}.{k}", "keys come from the store's key store, never from this file")
        else:
            params[k] = _plain(v_node)
    if name is None:
        doc.fail(node, f"{key}.operator", "missing")
    return OperatorChoice(name, params)


def load_masking_config(path: Path = MASKING_PATH) -> MaskingConfig:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    for required in ("categories", "free_text", "undeclared_columns"):
        if required not in top:
            doc.fail(doc.root, required, "missing section")
    categories = {k: _operator(doc, v, f"categories.{k}") for k, _, v in doc.mapping(top["categories"], "categories")}
    if "user" not in categories:
        doc.fail(top["categories"], "categories.user", "a fallback operator for every personal category is required")

    ft = {k: (kn, v) for k, kn, v in doc.mapping(top["free_text"], "free_text")}
    for required in ("language", "score_threshold", "recognizers", "entity_operators"):
        if required not in ft:
            doc.fail(top["free_text"], f"free_text.{required}", "missing")
    recognizers: dict[str, Mapping[str, Any]] = {}
    for name, k_node, v_node in doc.mapping(ft["recognizers"][1], "free_text.recognizers"):
        if name not in _RECOGNIZERS:
            doc.fail(k_node, f"free_text.recognizers.{name}", f"unknown recognizer; expected one of {', '.join(_RECOGNIZERS)}")
        params = _plain(v_node) or {}
        if not isinstance(params, dict):
            doc.fail(v_node, f"free_text.recognizers.{name}", "expected a mapping of parameters")
        regions = params.get("supported_regions", [])
        if not isinstance(regions, list) or not all(isinstance(r, str) and len(r) == 2 for r in regions):
            doc.fail(v_node, f"free_text.recognizers.{name}.supported_regions", "expected quoted two-letter region codes")
        recognizers[name] = params
    if not recognizers:
        doc.fail(ft["recognizers"][1], "free_text.recognizers", "list at least one recognizer")
    ner_model = doc.string(ft["ner_model"][1], "free_text.ner_model") if "ner_model" in ft else None
    if ner_model is not None and ner_model != "shipped":
        doc.fail(ft["ner_model"][1], "free_text.ner_model", "expected 'shipped' (the package's model) or no key")
    if "NerRecognizer" in recognizers and ner_model is None:
        doc.fail(ft["recognizers"][1], "free_text.recognizers.NerRecognizer", "needs free_text.ner_model")
    entity_ops = {
        k: _operator(doc, v, f"free_text.entity_operators.{k}")
        for k, _, v in doc.mapping(ft["entity_operators"][1], "free_text.entity_operators")
    }
    if "DEFAULT" not in entity_ops:
        doc.fail(ft["entity_operators"][1], "free_text.entity_operators.DEFAULT", "missing")

    und = {k: v for k, _, v in doc.mapping(top["undeclared_columns"], "undeclared_columns")}
    for required in ("sample_size", "min_hits", "name_hints"):
        if required not in und:
            doc.fail(top["undeclared_columns"], f"undeclared_columns.{required}", "missing")
    hints = frozenset(doc.string(n, "undeclared_columns.name_hints").lower() for n in doc.sequence(und["name_hints"], "undeclared_columns.name_hints"))
    not_evidence = frozenset(
        doc.string(n, "undeclared_columns.not_evidence") for n in doc.sequence(und["not_evidence"], "undeclared_columns.not_evidence")
    ) if "not_evidence" in und else frozenset()
    return MaskingConfig(
        path=Path(path),
        categories=categories,
        language=doc.string(ft["language"][1], "free_text.language"),
        score_threshold=doc.number(ft["score_threshold"][1], "free_text.score_threshold", low=0.0, high=1.0),
        batch_size=doc.integer(ft["batch_size"][1], "free_text.batch_size", minimum=1) if "batch_size" in ft else 256,
        recognizers=recognizers,
        entity_operators=entity_ops,
        sample_size=doc.integer(und["sample_size"], "undeclared_columns.sample_size", minimum=1),
        min_hits=doc.integer(und["min_hits"], "undeclared_columns.min_hits", minimum=1),
        name_hints=hints,
        ner_model=ner_model,
        not_evidence=not_evidence,
    )


# --- offline Presidio ------------------------------------------------------------------------

_offline_lock = threading.Lock()
_offline_done = False


def configure_offline() -> None:
    """Make tldextract use its bundled suffix list and never fetch one (idempotent).

    Presidio's email recognizer calls the module-level ``tldextract.extract``, which uses the
    module's default extractor; replacing that extractor is the only hook tldextract offers.
    """
    global _offline_done
    with _offline_lock:
        if _offline_done:
            return
        import tldextract.tldextract as tldx

        tldx.TLD_EXTRACTOR = tldx.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
        _offline_done = True


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "siloguard"


def blank_pipeline(cache_dir: Path, language: str) -> Path:
    """A blank spaCy pipeline on disk (tokenizer only), created once; never downloaded."""
    import spacy

    path = Path(cache_dir) / f"spacy-blank-{language}-{spacy.__version__}"
    if (path / "config.cfg").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    spacy.blank(language).to_disk(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    if not (path / "config.cfg").is_file():
        raise ConfigError(f"could not create the spaCy pipeline in {path}; check that the cache directory is writable")
    return path


def _possible_phone_recognizer() -> type:
    """Presidio's PhoneRecognizer at phonenumbers' POSSIBLE leniency, dropping short matches.

    Presidio's own leniency setting alone either misses numbers that are not in service
    (VALID) or calls every "PACK OF 72" a phone number (POSSIBLE); a digit floor, which
    Presidio has no parameter for, separates the two.
    """
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class PossiblePhoneRecognizer(PhoneRecognizer):  # type: ignore[misc]
        def __init__(self, *, min_digits: int = 9, **kwargs: Any) -> None:
            kwargs.setdefault("leniency", 0)
            kwargs.setdefault("name", "PossiblePhoneRecognizer")
            super().__init__(**kwargs)
            self.min_digits = int(min_digits)

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = super().analyze(text, entities, nlp_artifacts)
            return [r for r in found if sum(c.isdigit() for c in text[r.start : r.end]) >= self.min_digits]

    return PossiblePhoneRecognizer


class Masker:
    """Applies the masking configuration with one store's keys."""

    def __init__(
        self,
        *,
        hash_salt: Secret,
        encrypt_key: Secret | None = None,
        config: MaskingConfig | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        from presidio_anonymizer.operators import Encrypt, Hash, Mask, Redact, Replace

        self.config = config or load_masking_config()
        self._salt = hash_salt
        self._encrypt_key = encrypt_key
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._ops = {"redact": Redact(), "replace": Replace(), "mask": Mask(), "hash": Hash(), "encrypt": Encrypt()}
        self._lock = threading.Lock()
        self._batch: Any = None
        self._anonymizer: Any = None
        if len(hash_salt) < 16:
            raise ConfigError("the masking hash salt must be at least 16 bytes")
        for category, choice in self.config.categories.items():
            try:
                self._ops[choice.operator].validate(self._params(choice, category))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001  Presidio's validation errors vary by operator
                raise ConfigError(f"{self.config.path}: categories.{category}: invalid parameters ({exc})") from None

    @classmethod
    def for_store(cls, store_keys: StoreKeys, *, config: MaskingConfig | None = None, cache_dir: Path | None = None) -> Masker:
        return cls(
            hash_salt=store_keys.derived("masking-hash"),
            encrypt_key=store_keys.derived("masking-encrypt"),
            config=config,
            cache_dir=cache_dir,
        )

    def _params(self, choice: OperatorChoice, label: str) -> dict[str, Any]:
        params = dict(choice.params)
        if choice.operator == "hash":
            params.setdefault("hash_type", "sha256")
            params["salt"] = self._salt.reveal()
        elif choice.operator == "encrypt":
            if self._encrypt_key is None:
                raise ConfigError(f"{self.config.path}: {label} uses encrypt but the masker has no encryption key")
            params["key"] = self._encrypt_key.reveal()
        elif choice.operator == "replace":
            params.setdefault("entity_type", label)
        return params

    # --- declared columns ---------------------------------------------------------------

    def mask_column(self, values: pd.Series, category: str) -> tuple[pd.Series, int]:
        """(masked column, number of values masked) for a column of ``category``; nulls stay null."""
        choice = self.config.operator_for(category)
        op = self._ops[choice.operator]
        params = self._params(choice, category)
        present = values.notna().to_numpy()
        n = int(present.sum())
        out = np.full(len(values), None, dtype=object)
        if n:
            kept = values[present]
            if choice.operator in _CONSTANT_OPERATORS:
                out[present] = op.operate(str(kept.iloc[0]), params)
            elif choice.operator == "encrypt":
                out[present] = [op.operate(str(v), params) for v in kept.tolist()]
            else:  # distinct values first: convert and operate once per distinct value
                codes, uniques = pd.factorize(kept)
                mapped = np.array([op.operate(str(u), params) for u in uniques.tolist()], dtype=object)
                out[present] = mapped[codes]
        return pd.Series(out, index=values.index, dtype=object), n

    # --- free text ----------------------------------------------------------------------

    def _engines(self) -> tuple[Any, Any]:
        with self._lock:
            if self._batch is None:
                configure_offline()
                from presidio_analyzer import (
                    AnalyzerEngine,
                    BatchAnalyzerEngine,
                    RecognizerRegistry,
                )
                from presidio_analyzer import predefined_recognizers as pr
                from presidio_analyzer.nlp_engine import NlpEngineProvider
                from presidio_anonymizer import AnonymizerEngine

                from siloguard.privacy import freetext

                lang = self.config.language
                nlp_configuration: dict[str, Any] = {"nlp_engine_name": "spacy"}
                if self.config.ner_model:  # a directory on disk: Presidio loads it, never downloads
                    model = freetext.model_path()
                    nlp_configuration["ner_model_configuration"] = {
                        "model_to_presidio_entity_mapping": {label: label for label in freetext.NER_LABELS},
                        "labels_to_ignore": [],
                        "low_score_entity_names": [],
                    }
                else:
                    model = blank_pipeline(self._cache_dir, lang)
                nlp_configuration["models"] = [{"lang_code": lang, "model_name": str(model)}]
                nlp = NlpEngineProvider(nlp_configuration=nlp_configuration).create_engine()
                registry = RecognizerRegistry(supported_languages=[lang])
                for name, params in self.config.recognizers.items():
                    if name in _FREETEXT_FACTORIES:
                        registry.add_recognizer(getattr(freetext, _FREETEXT_FACTORIES[name])(supported_language=lang, **params))
                        continue
                    cls = _possible_phone_recognizer() if name == "PossiblePhoneRecognizer" else getattr(pr, name)
                    registry.add_recognizer(cls(supported_language=lang, **params))
                analyzer = AnalyzerEngine(
                    registry=registry,
                    nlp_engine=nlp,
                    supported_languages=[lang],
                    default_score_threshold=self.config.score_threshold,
                )
                self._batch = BatchAnalyzerEngine(analyzer)
                self._anonymizer = AnonymizerEngine()
            return self._batch, self._anonymizer

    def _analyze(self, texts: list[str]) -> list[list[Any]]:
        batch, _ = self._engines()
        return batch.analyze_iterator(texts, language=self.config.language, batch_size=self.config.batch_size)

    def scan_texts(self, values: pd.Series) -> tuple[pd.Series, Counter[str]]:
        """Replace pattern findings in a free-text column; (new column, findings per entity type)."""
        from presidio_anonymizer.entities import OperatorConfig

        present = values.notna().to_numpy()
        out = values.astype(object).where(values.notna(), None).to_numpy(copy=True)
        found: Counter[str] = Counter()
        if not present.any():
            return pd.Series(out, index=values.index, dtype=object), found
        texts = values[present].astype(str)
        codes, uniques = pd.factorize(texts)
        results = self._analyze(list(uniques))
        _, anonymizer = self._engines()
        operators = {
            entity: OperatorConfig(choice.operator, self._params(choice, entity))
            for entity, choice in self.config.entity_operators.items()
        }
        replaced = np.array(list(uniques), dtype=object)
        counts = np.bincount(codes, minlength=len(uniques))
        for i, findings in enumerate(results):
            if findings:
                result = anonymizer.anonymize(text=replaced[i], analyzer_results=findings, operators=operators)
                replaced[i] = result.text
                for item in result.items:  # what was replaced, after overlaps were resolved
                    found[item.entity_type] += int(counts[i])
        out[present] = replaced[codes]
        return pd.Series(out, index=values.index, dtype=object), found

    # --- undeclared columns -------------------------------------------------------------

    def pii_evidence(self, name: str, values: pd.Series) -> list[str]:
        """Why an undeclared column looks like personal data (empty if it does not).

        The reasons name entity types and counts, never a value.
        """
        evidence = []
        words = {w.lower() for w in re.findall(r"[A-Za-z][a-z]*|[A-Z]+(?![a-z])", str(name))}
        words.add(re.sub(r"[^a-z]", "", str(name).lower()))
        hinted = sorted(words & self.config.name_hints)
        if hinted:
            evidence.append(f"its name suggests {', '.join(hinted)}")
        sample = values.dropna()
        if len(sample) > self.config.sample_size:
            sample = sample.sample(self.config.sample_size, random_state=0)
        texts = [str(v) for v in sample]
        if texts:
            hits: Counter[str] = Counter()
            n_hit = 0
            for findings in self._analyze(texts):
                kinds = {f.entity_type for f in findings} - self.config.not_evidence
                if kinds:
                    n_hit += 1
                    hits.update(kinds)
            if n_hit >= self.config.min_hits:
                kinds = ", ".join(f"{k} in {v}" for k, v in sorted(hits.items()))
                evidence.append(f"{kinds} of {len(texts)} sampled values")
        return evidence

    def __repr__(self) -> str:
        return f"Masker(config={str(self.config.path)!r})"
