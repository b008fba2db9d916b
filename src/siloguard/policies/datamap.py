"""Data maps: what each dataset a store holds contains, and what it may be used for.

One YAML file per dataset in ``datamaps/`` next to this module declares the dataset's
columns, each column's data category (a fideslang key), the purposes (fideslang data uses)
each column may serve and how it must be treated for that purpose, the lawful basis (GDPR
Art. 6) of every purpose, the retention period (ISO 8601 duration) and the region and
countries the dataset may be held in. Keys are checked against ``taxonomy.yaml``.

A purpose covers the purposes below it: a column declared for ``analytics.reporting`` serves
a request for ``analytics.reporting.campaign_insights``, not one for ``analytics``. The most
specific declaration wins.

Treatments:
    clear         the value passes unchanged
    mask          replaced by the Presidio operator configured for its category
                  (``siloguard/privacy/masking.yaml``)
    pseudonymise  keyed HMAC pseudonym (the subject id column, always)
    scan          free text: searched with Presidio pattern recognizers, findings replaced

A bad map fails at load with ``file:line: key: problem``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from siloguard._yaml import YamlDoc
from siloguard.errors import ConfigError
from siloguard.policies.taxonomy import Taxonomy, ancestors, covers, load_taxonomy

#: Where the data of a store goes, and where it came from: what an access answer states
#: (GDPR Art. 15(1)(c), (g)); the same for every store, so no store's part can change it.
ACCESS_RECIPIENTS: tuple[str, ...] = (
    "no third party receives records",
    "the federation server receives differentially private model updates computed in the store, never records",
)
ACCESS_SOURCE = "collected by the store from the data subject at purchase (invoices of identified customers)"
#: Art. 15(1)(h): whether automated decision-making, including profiling, is used, and how.
ACCESS_PROFILING = (
    "Your purchase history is used, where you consented, to train a recommender that ranks products for you "
    "(profiling). It decides which offers you see; no decision with legal or similarly significant effects on "
    "you is made by automated means alone (GDPR Art. 22)."
)
#: Art. 15(1)(e), (f) and the CCPA's rights notice: what the subject can do next, by law.
ACCESS_RIGHTS: dict[str, tuple[str, ...]] = {
    "gdpr": (
        "ask for a correction of inaccurate data (Art. 16)",
        "ask for erasure (Art. 17): submit an erasure request",
        "ask for processing to be restricted (Art. 18)",
        "object to processing, including profiling and direct marketing (Art. 21): submit an opt-out request",
        "withdraw any consent at any time, without affecting what was done before (Art. 7(3))",
        "lodge a complaint with a supervisory authority, in particular where you live or work (Art. 77)",
    ),
    "ccpa": (
        "ask to delete personal information (Cal. Civ. Code 1798.105): submit an erasure request",
        "ask to correct inaccurate personal information (1798.106)",
        "opt out of the sale or sharing of personal information (1798.120): submit an opt-out request",
        "not be discriminated against for exercising these rights (1798.125)",
        "complain to the California Privacy Protection Agency or the Attorney General",
    ),
}


def access_answer(entries: list[dict[str, Any]], datamap: DataMap | None = None, *, jurisdiction: str = "gdpr") -> dict[str, Any]:
    """An access answer from per-store entries: what every answer states about the dataset
    (purposes and lawful bases, retention, recipients, source, profiling, the subject's rights
    under ``jurisdiction``) from its data map (default: the shipped ``transactions``), and the counts."""
    datamap = datamap if datamap is not None else load_datamaps()["transactions"]
    return {
        "stores": entries,
        "purposes": [{"purpose": p, "lawful_basis": b} for p, b in sorted(datamap.lawful_bases.items())],
        "retention": datamap.retention,
        "recipients": list(ACCESS_RECIPIENTS),
        "source": ACCESS_SOURCE,
        "profiling": ACCESS_PROFILING,
        "rights": list(ACCESS_RIGHTS.get(jurisdiction, ACCESS_RIGHTS["gdpr"])),
        "records": sum(int(e["records"]) for e in entries),
    }

__all__ = [
    "ACCESS_PROFILING",
    "ACCESS_RECIPIENTS",
    "ACCESS_RIGHTS",
    "ACCESS_SOURCE",
    "access_answer",
    "DATAMAPS_DIR",
    "ColumnSpec",
    "DataMap",
    "Treatment",
    "load_datamap",
    "load_datamaps",
]

DATAMAPS_DIR = Path(__file__).with_name("datamaps")

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_TOP_KEYS = {
    "dataset",
    "description",
    "region",
    "countries",
    "retention",
    "subject_column",
    "purposes",
    "columns",
}
_REQUIRED_TOP = _TOP_KEYS - {"description"}
_COLUMN_KEYS = {"category", "uses", "free_text", "description"}
# pydantic parses ISO 8601 durations (years as 365 days, months as 30 days); used instead
# of a hand-written parser.
_DURATION = TypeAdapter(timedelta)


class Treatment(str, Enum):
    CLEAR = "clear"
    MASK = "mask"
    PSEUDONYMISE = "pseudonymise"
    SCAN = "scan"


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    category: str
    uses: Mapping[str, Treatment]
    free_text: bool = False

    def treatment_for(self, purpose: str) -> Treatment | None:
        """Treatment under the most specific declared use covering ``purpose``, or None."""
        for key in ancestors(purpose):
            if key in self.uses:
                return self.uses[key]
        return None


@dataclass(frozen=True)
class DataMap:
    dataset: str
    path: Path
    digest: str
    region: str
    countries: tuple[str, ...]
    retention: str
    retention_period: timedelta
    subject_column: str
    lawful_bases: Mapping[str, str]
    columns: Mapping[str, ColumnSpec]
    description: str = ""

    def lawful_basis(self, purpose: str) -> str | None:
        """Basis of the most specific declared purpose covering ``purpose``, or None."""
        for key in ancestors(purpose):
            if key in self.lawful_bases:
                return self.lawful_bases[key]
        return None

    def columns_for(self, purpose: str) -> dict[str, Treatment]:
        """Declared columns that may serve ``purpose``, with their treatment, in map order."""
        out: dict[str, Treatment] = {}
        for name, spec in self.columns.items():
            treatment = spec.treatment_for(purpose)
            if treatment is not None:
                out[name] = treatment
        return out


def _covered(purpose: str, declared: Mapping[str, str]) -> bool:
    return any(covers(key, purpose) for key in declared)


def load_datamap(path: Path, *, taxonomy: Taxonomy | None = None) -> DataMap:
    """Read and check one data map file."""
    tax = taxonomy or load_taxonomy()
    doc = YamlDoc(path)
    top: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, key_node, value_node in doc.mapping(doc.root, ""):
        if key not in _TOP_KEYS:
            doc.fail(key_node, key, f"unknown key; expected one of {', '.join(sorted(_TOP_KEYS))}")
        top[key] = (key_node, value_node)
    for key in sorted(_REQUIRED_TOP - top.keys()):
        doc.fail(doc.root, key, "missing")

    dataset = doc.string(top["dataset"][1], "dataset")
    if not _NAME.fullmatch(dataset):
        doc.fail(top["dataset"][1], "dataset", "use lower-case letters, digits and _")
    region = doc.string(top["region"][1], "region")
    countries: list[str] = []
    for node in doc.sequence(top["countries"][1], "countries"):
        code = doc.string(node, "countries")
        if not _COUNTRY.fullmatch(code):
            doc.fail(node, "countries", f"{code!r} is not an ISO 3166-1 alpha-2 code (e.g. GB)")
        countries.append(code)
    if not countries:
        doc.fail(top["countries"][1], "countries", "list at least one country")

    retention_node = top["retention"][1]
    retention = doc.string(retention_node, "retention")
    try:
        period = _DURATION.validate_strings(retention)
    except ValidationError:
        period = None
    if not retention.startswith("P") or period is None or period <= timedelta(0):
        doc.fail(
            retention_node,
            "retention",
            f"{retention!r} is not a positive ISO 8601 duration (e.g. P2Y, P18M, P90D)",
        )

    bases: dict[str, str] = {}
    for purpose, key_node, value_node in doc.mapping(top["purposes"][1], "purposes"):
        where = f"purposes.{purpose}"
        if not tax.is_use(purpose):
            doc.fail(key_node, where, f"unknown data use {purpose!r} (not in taxonomy.yaml)")
        if value_node.tag == "tag:yaml.org,2002:null":
            doc.fail(value_node, where, "purpose without lawful basis")
        basis = doc.string(value_node, where)
        if basis not in tax.lawful_bases:
            doc.fail(
                value_node,
                where,
                f"unknown lawful basis {basis!r}; expected one of {', '.join(tax.lawful_bases)}",
            )
        bases[purpose] = basis
    if not bases:
        doc.fail(top["purposes"][1], "purposes", "declare at least one purpose with its lawful basis")

    subject_node = top["subject_column"][1]
    subject_column = doc.string(subject_node, "subject_column")
    columns: dict[str, ColumnSpec] = {}
    for name, key_node, spec_node in doc.mapping(top["columns"][1], "columns"):
        columns[name] = _column(doc, tax, name, key_node, spec_node, bases, subject_column)
    if subject_column not in columns:
        doc.fail(subject_node, "subject_column", f"{subject_column!r} is not a declared column")
    if not covers("user.unique_id", columns[subject_column].category):
        doc.fail(subject_node, "subject_column", "the subject column's category must be user.unique_id")

    description = doc.string(top["description"][1], "description") if "description" in top else ""
    return DataMap(
        dataset=dataset,
        path=Path(path),
        digest=hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        region=region,
        countries=tuple(countries),
        retention=retention,
        retention_period=period,
        subject_column=subject_column,
        lawful_bases=bases,
        columns=columns,
        description=description,
    )


def _column(
    doc: YamlDoc,
    tax: Taxonomy,
    name: str,
    key_node: yaml.Node,
    spec_node: yaml.Node,
    bases: Mapping[str, str],
    subject_column: str,
) -> ColumnSpec:
    where = f"columns.{name}"
    fields: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, k_node, v_node in doc.mapping(spec_node, where):
        if key not in _COLUMN_KEYS:
            doc.fail(k_node, f"{where}.{key}", f"unknown key; expected one of {', '.join(sorted(_COLUMN_KEYS))}")
        fields[key] = (k_node, v_node)
    for key in ("category", "uses"):
        if key not in fields:
            doc.fail(key_node, f"{where}.{key}", "missing")
    category_node = fields["category"][1]
    category = doc.string(category_node, f"{where}.category")
    if not tax.is_category(category):
        doc.fail(category_node, f"{where}.category", f"unknown data category {category!r} (not in taxonomy.yaml)")
    free_text = doc.boolean(fields["free_text"][1], f"{where}.free_text") if "free_text" in fields else False

    uses: dict[str, Treatment] = {}
    for purpose, p_node, t_node in doc.mapping(fields["uses"][1], f"{where}.uses"):
        key = f"{where}.uses.{purpose}"
        if not tax.is_use(purpose):
            doc.fail(p_node, key, f"unknown data use {purpose!r} (not in taxonomy.yaml)")
        if not _covered(purpose, bases):
            doc.fail(p_node, key, "purpose without lawful basis: declare it (or a parent) under purposes")
        value = doc.string(t_node, key)
        try:
            treatment = Treatment(value)
        except ValueError:
            doc.fail(t_node, key, f"unknown treatment {value!r}; expected one of {', '.join(t.value for t in Treatment)}")
        if name == subject_column and treatment is not Treatment.PSEUDONYMISE:
            doc.fail(t_node, key, "the subject column always leaves the gate pseudonymised")
        if treatment is Treatment.SCAN and not free_text:
            doc.fail(t_node, key, "scan is for free-text columns (set free_text: true)")
        if free_text and treatment is Treatment.CLEAR:
            doc.fail(t_node, key, "a free-text column is scanned or masked, never clear")
        uses[purpose] = treatment
    if not uses:
        doc.fail(fields["uses"][1], f"{where}.uses", "declare at least one use")
    return ColumnSpec(name=name, category=category, uses=uses, free_text=free_text)


def load_datamaps(directory: Path = DATAMAPS_DIR, *, taxonomy: Taxonomy | None = None) -> dict[str, DataMap]:
    """Every ``*.yaml`` data map in ``directory``, by dataset name."""
    if taxonomy is None:
        from siloguard._files import parsed_once

        return parsed_once("datamaps", Path(directory), "*.yaml", lambda: _load_datamaps(Path(directory), None))
    return _load_datamaps(Path(directory), taxonomy)


def _load_datamaps(directory: Path, taxonomy: Taxonomy | None) -> dict[str, DataMap]:
    paths = sorted(Path(directory).glob("*.yaml"))
    if not paths:
        raise ConfigError(f"{directory}: no data maps (*.yaml) found; add one per dataset")
    maps: dict[str, DataMap] = {}
    for path in paths:
        datamap = load_datamap(path, taxonomy=taxonomy)
        if datamap.dataset in maps:
            raise ConfigError(
                f"{path}: dataset {datamap.dataset!r} is already declared in {maps[datamap.dataset].path.name}"
            )
        maps[datamap.dataset] = datamap
    return maps
