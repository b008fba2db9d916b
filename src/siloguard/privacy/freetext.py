"""Free-text PII recognizers, offline: the project's small NER model, plus patterns.

* **Names, places, street addresses, organisations**: a spaCy NER pipeline (hash-embedding CNN,
  no word vectors) trained by the project from templated sentences (the recipe and the build
  command are in :mod:`siloguard.data.freetext`). It is shipped in ``freetext_model/`` next to
  this file and handed to Presidio as its NLP engine, a path on disk: Presidio never tries to
  download a model. Its labels are Presidio's entity names (PERSON, LOCATION, STREET_ADDRESS,
  ORGANIZATION), read by :func:`ner_recognizer` (Presidio's ``SpacyRecognizer`` less spans made
  only of common words).
* **Dates and times, ages, US social security numbers**: regular-expression recognizers
  (:class:`RegexRecognizer`) whose patterns carry their own context words (Presidio's context
  enhancer needs lemmas, which a pipeline without a lemmatizer does not give).

Rebuild the model (5-8 minutes on 2 cores)::

    .venv/bin/python -m siloguard.data.freetext build
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AGE_PATTERNS",
    "DATE_PATTERNS",
    "MODEL_DIR",
    "NER_LABELS",
    "SSN_PATTERNS",
    "VOCABULARY_FILE",
    "RegexRecognizer",
    "age_recognizer",
    "date_time_recognizer",
    "model_path",
    "ner_recognizer",
    "ssn_context_recognizer",
]

MODEL_DIR = Path(__file__).with_name("freetext_model")
VOCABULARY_FILE = "common_words.txt"  # in MODEL_DIR: product and common English words, never a name (siloguard.data.freetext)
NER_LABELS = ("PERSON", "LOCATION", "STREET_ADDRESS", "ORGANIZATION")


def model_path() -> Path:
    """The shipped NER pipeline's directory (raises if the package was installed without it)."""
    from siloguard.errors import ConfigError

    if not (MODEL_DIR / "config.cfg").is_file():
        raise ConfigError(
            f"the free-text NER model is missing from {MODEL_DIR}; build it with "
            "`python -m siloguard.data.freetext build` or reinstall siloguard"
        )
    return MODEL_DIR


# --- patterns --------------------------------------------------------------------------------

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DAY = r"(?:mon|tues?|wed(?:nes)?|thu(?:rs?)?|fri|sat(?:ur)?|sun)(?:day)?\.?"
_ORD = r"(?:[12][0-9]|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]|20)\d{2}"
_YY = r"['\u2019]\d{2}"  # apostrophe year: '24
_YEARS = rf"(?:{_YEAR}|{_YY})"
_DD = r"(?:[12]\d|3[01]|0?[1-9])"
_MM = r"(?:0?[1-9]|1[0-2])"
_TIME = r"(?:(?:[01]?\d|2[0-3])[:.][0-5]\d(?::[0-5]\d)?(?:\s?[ap]\.?m\.?)?|(?:1[0-2]|0?[1-9])\s?[ap]\.?m\.?)"
_AT_TIME = rf"(?:,?\s(?:at\s)?{_TIME})?"

#: (regex, score); the span is the named group ``v`` when there is one, else the whole match.
#: Families rather than single shapes: numeric dates with any of - / . between the parts
#: (day-month-year, month-day-year, year-month-day; one separator throughout), month names
#: with a four-digit or an apostrophe year ('24), ordinals before or after the month
#: ("15th of June", "June the 15th"), each with an optional weekday and time.
DATE_PATTERNS: tuple[tuple[str, float], ...] = (
    # 15 June 2024, the 15th of June, 15-Jun-24, Sat 15 Jun '24
    (rf"\b(?:{_DAY},?\s)?{_ORD}(?:\sof)?[\s-]{_MONTH}(?:,?[\s-](?:{_YEARS}|\d{{2}}\b))?\b{_AT_TIME}", 0.9),
    # June 15, June the 15th, 2024, Jun 15 '24
    (rf"\b(?:{_DAY},?\s)?{_MONTH}\s(?:the\s)?{_ORD}(?:,?\s{_YEARS})?\b{_AT_TIME}", 0.9),
    # June 2024, June '24, Jun-2024, June, 2024
    (rf"\b{_MONTH}(?:,?\s|-)?(?:{_YEAR}|{_YY})\b", 0.9),
    # 2024-06-15, 2024/06/15, 2024.06.15, with a time
    (rf"\b{_YEAR}(?P<s>[-/.]){_MM}(?P=s){_DD}(?:[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?)?\b", 0.9),
    # 15/06/2024, 15.06.24, 06-15-2024 (day or month first)
    (rf"\b{_DD}(?P<s>[-/.]){_MM}(?P=s)(?:{_YEAR}|\d{{2}})\b{_AT_TIME}", 0.9),
    (rf"\b{_MM}(?P<s>[-/.]){_DD}(?P=s)(?:{_YEAR}|\d{{2}})\b{_AT_TIME}", 0.9),
    (rf"(?<![\d.:]){_TIME}(?![\d:])", 0.6),
    (rf"\b(?:(?:on|next|last|this|every)\s)(?P<v>{_DAY})\b", 0.6),
)
AGE_PATTERNS: tuple[tuple[str, float], ...] = (
    (r"\b(?:aged?|age\s?:|age\sof|at\sthe\sage\sof)\s?(?P<v>\d{1,3})\b", 0.9),
    (r"\b(?P<v>\d{1,3})[\s-]?(?:years?|yrs?|yo)(?:[\s-]old)?\b(?!\s(?:ago|warranty|guarantee))", 0.9),
    (r"\b(?:turn(?:ed|s|ing)?|is\snow|just\sturned)\s(?P<v>\d{1,3})\b(?=\s*(?:this|last|next|on|in|years?|$|[.,;!]))", 0.6),
)
SSN_PATTERNS: tuple[tuple[str, float], ...] = (
    (r"\b(?:ssn|social\ssecurity(?:\s(?:number|no\.?|#))?)\s?(?:is|:|#|no\.?)?\s?(?P<v>\d{3}[- .]?\d{2}[- .]?\d{4})\b", 0.85),
)


def _regex_base() -> type:
    from presidio_analyzer import LocalRecognizer

    return LocalRecognizer


class RegexRecognizer(_regex_base()):  # type: ignore[misc]
    """Case-insensitive regexes for one entity; named group ``v`` narrows the span."""

    def __init__(self, *, entity: str, patterns: Sequence[tuple[str, float]], name: str, supported_language: str = "en") -> None:
        self._compiled = [(re.compile(p, re.IGNORECASE), s) for p, s in patterns]
        super().__init__(supported_entities=[entity], name=name, supported_language=supported_language)

    def load(self) -> None:  # noqa: D102  nothing to load
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        from presidio_analyzer import RecognizerResult

        entity = self.supported_entities[0]
        if entities and entity not in entities:
            return []
        found: dict[tuple[int, int], float] = {}
        for regex, score in self._compiled:
            for m in regex.finditer(text):
                start, end = m.span("v") if "v" in regex.groupindex and m.group("v") else m.span()
                if end > start:
                    found[(start, end)] = max(score, found.get((start, end), 0.0))
        return [
            RecognizerResult(entity, s, e, score, recognition_metadata={"recognizer_name": self.name, "recognizer_identifier": self.id})
            for (s, e), score in sorted(found.items())
        ]


def _common_words() -> frozenset[str]:
    """English stop words, Faker's ~1,000 common English words and the model's product vocabulary."""
    from faker.providers.lorem.en_US import Provider as Lorem
    from spacy.lang.en.stop_words import STOP_WORDS

    words = {w.lower() for w in (*Lorem.word_list, *STOP_WORDS)}
    vocab = MODEL_DIR / VOCABULARY_FILE
    if vocab.is_file():
        words.update(vocab.read_text(encoding="utf-8").split())
    return frozenset(words)


def ner_recognizer(supported_language: str = "en", supported_entities: Sequence[str] = NER_LABELS) -> Any:
    """Presidio's SpacyRecognizer over the shipped model's entities, without spans made only of
    common English or product words ("nobody", "Happy", "TUMBLER, BAROQUE"): a name of that
    kind is rare, a mis-tagged sentence start or product word is not."""
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    common = _common_words()

    class NerRecognizer(SpacyRecognizer):  # type: ignore[misc]
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = super().analyze(text, entities, nlp_artifacts)
            return [r for r in found if not all(w.lower() in common for w in re.findall(r"\w+", text[r.start : r.end]))]

    return NerRecognizer(supported_language=supported_language, supported_entities=list(supported_entities), name="NerRecognizer")


def date_time_recognizer(supported_language: str = "en") -> RegexRecognizer:
    return RegexRecognizer(entity="DATE_TIME", patterns=DATE_PATTERNS, name="DateTimeRecognizer", supported_language=supported_language)


def age_recognizer(supported_language: str = "en") -> RegexRecognizer:
    return RegexRecognizer(entity="AGE", patterns=AGE_PATTERNS, name="AgeRecognizer", supported_language=supported_language)


def ssn_context_recognizer(supported_language: str = "en") -> RegexRecognizer:
    return RegexRecognizer(entity="US_SSN", patterns=SSN_PATTERNS, name="SsnContextRecognizer", supported_language=supported_language)
