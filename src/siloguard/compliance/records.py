"""The compliance records as data: processing activities (Art. 30), DPIAs, transfers,
adequacy and sensitive categories, read from ``policies/records/*.yaml``.

Each file is read with :class:`~siloguard._yaml.YamlDoc`, so a bad value fails at
load with ``file:line: key: problem``. Whether the records are *complete* or *consistent* with
the data maps is not checked here: that is what the rules are for (a missing Art. 30 field is
a finding of ``records-of-processing``, not a load error), so a check can name what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml

from siloguard._yaml import YamlDoc
from siloguard.errors import ConfigError

__all__ = [
    "RECORDS_DIR",
    "Activity",
    "Adequacy",
    "Assessment",
    "Records",
    "Sensitivity",
    "TransferMechanism",
    "load_records",
]

RECORDS_DIR = Path(__file__).resolve().parent.parent / "policies" / "records"

_ID = re.compile(r"[a-z][a-z0-9_-]*")
_COUNTRY = re.compile(r"[A-Z]{2}|EEA")
_DPIA_STATUS = ("draft", "approved", "rejected")
MECHANISMS = ("scc", "bcr", "code_of_conduct", "certification", "derogation")


@dataclass(frozen=True)
class Activity:
    """One processing activity (an Art. 30 record plus what the rules need to know)."""

    id: str
    name: str
    purposes: tuple[str, ...]
    datasets: dict[str, tuple[str, ...]]
    description: str = ""
    controller: dict[str, str] = field(default_factory=dict)
    lawful_basis: str | None = None
    data_subjects: tuple[str, ...] = ()
    data_categories: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    transfers: str = ""
    erasure: str = ""
    security: tuple[str, ...] = ()
    consent_gated: bool = False
    sells_or_shares: bool = False
    profiling: bool = False
    large_scale: bool = False
    dpia: str | None = None
    art9_basis: str | None = None
    honours_limit_use: bool = False
    federation_training: bool = False


@dataclass(frozen=True)
class Assessment:
    id: str
    activity: str
    status: str
    approved_on: date | None
    approved_by: str = ""
    document: str = ""


@dataclass(frozen=True)
class TransferMechanism:
    store: str
    mechanism: str
    reference: str
    since: date


@dataclass(frozen=True)
class Adequacy:
    """Which countries need no transfer mechanism, and how retail country names map to codes."""

    source: str
    eea: frozenset[str]
    adequate: dict[str, str]
    country_names: dict[str, tuple[str, ...]]

    def is_free(self, code: str) -> bool:
        """Data may go to ``code`` without a mechanism: EEA or a full adequacy decision."""
        return code == "EEA" or code in self.eea or code in self.adequate

    def codes(self, country_name: str) -> tuple[str, ...] | None:
        """ISO codes a retail ``Country`` value stands for; None if the name is not listed."""
        return self.country_names.get(country_name)

    def declared(self, country: str) -> tuple[str, ...] | None:
        """ISO codes of a country a store declares: a listed name (any case) or an ISO code; None if unknown."""
        text = country.strip()
        exact = self.country_names.get(text)
        if exact is not None:
            return exact
        lowered = {name.lower(): codes for name, codes in self.country_names.items()}
        if text.lower() in lowered:
            return lowered[text.lower()]
        code = text.upper()
        known = {c for codes in self.country_names.values() for c in codes} | set(self.eea) | set(self.adequate)
        return (code,) if code in known and len(code) == 2 else None

    def known_names(self) -> list[str]:
        return sorted(self.country_names)


@dataclass(frozen=True)
class Sensitivity:
    gdpr_special: tuple[str, ...]
    ccpa_sensitive: tuple[str, ...]
    art9_conditions: tuple[str, ...]
    ccpa_permitted_uses: tuple[str, ...]


@dataclass(frozen=True)
class Records:
    controller: dict[str, str]
    activities: dict[str, Activity]
    assessments: dict[str, Assessment]
    coordinator_country: str
    transfers: dict[str, TransferMechanism]
    adequacy: Adequacy
    sensitivity: Sensitivity
    directory: Path


def _strings(doc: YamlDoc, node: yaml.Node, key: str) -> tuple[str, ...]:
    return tuple(doc.string(n, key) for n in doc.sequence(node, key))


def _date(doc: YamlDoc, node: yaml.Node, key: str) -> date:
    text = doc.string(node, key)
    try:
        return date.fromisoformat(text)
    except ValueError:
        doc.fail(node, key, f"{text!r} is not a date: use YYYY-MM-DD")


def _text_map(doc: YamlDoc, node: yaml.Node, key: str) -> dict[str, str]:
    return {k: doc.string(v, f"{key}.{k}") for k, _, v in doc.mapping(node, key)}


_ACTIVITY_LISTS = ("purposes", "data_subjects", "data_categories", "recipients", "security")
_ACTIVITY_TEXT = ("name", "description", "lawful_basis", "transfers", "erasure", "dpia", "art9_basis")
_ACTIVITY_FLAGS = (
    "consent_gated", "sells_or_shares", "profiling", "large_scale", "honours_limit_use", "federation_training",
)


def _activity(doc: YamlDoc, name: str, node: yaml.Node) -> Activity:
    where = f"activities.{name}"
    if not _ID.fullmatch(name):
        doc.fail(node, where, "activity ids are lower-case letters, digits, _ and -")
    values: dict[str, object] = {}
    for key, key_node, value in doc.mapping(node, where):
        k = f"{where}.{key}"
        if key in _ACTIVITY_LISTS:
            values[key] = _strings(doc, value, k)
        elif key in _ACTIVITY_TEXT:
            values[key] = doc.string(value, k)
        elif key in _ACTIVITY_FLAGS:
            values[key] = doc.boolean(value, k)
        elif key == "controller":
            values[key] = _text_map(doc, value, k)
        elif key == "datasets":
            values[key] = {ds: _strings(doc, cols, f"{k}.{ds}") for ds, _, cols in doc.mapping(value, k)}
        else:
            known = _ACTIVITY_LISTS + _ACTIVITY_TEXT + _ACTIVITY_FLAGS + ("controller", "datasets")
            doc.fail(key_node, k, f"unknown key; expected one of {', '.join(sorted(known))}")
    if "name" not in values:
        doc.fail(node, f"{where}.name", "missing")
    values.setdefault("purposes", ())
    values.setdefault("datasets", {})
    return Activity(id=name, **values)  # type: ignore[arg-type]


def _processing(path: Path) -> tuple[dict[str, str], dict[str, Activity]]:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    if "activities" not in top:
        doc.fail(doc.root, "activities", "missing")
    controller = _text_map(doc, top["controller"], "controller") if "controller" in top else {}
    activities = {name: _activity(doc, name, node) for name, _, node in doc.mapping(top["activities"], "activities")}
    return controller, activities


def _assessments(path: Path) -> dict[str, Assessment]:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    out: dict[str, Assessment] = {}
    for dpia_id, _, node in doc.mapping(top.get("assessments", doc.root), "assessments"):
        fields = {k: (kn, v) for k, kn, v in doc.mapping(node, f"assessments.{dpia_id}")}
        for required in ("activity", "status"):
            if required not in fields:
                doc.fail(node, f"assessments.{dpia_id}.{required}", "missing")
        status = doc.string(fields["status"][1], f"assessments.{dpia_id}.status")
        if status not in _DPIA_STATUS:
            doc.fail(fields["status"][1], f"assessments.{dpia_id}.status", f"use one of {', '.join(_DPIA_STATUS)}")
        approved_on = _date(doc, fields["approved_on"][1], f"assessments.{dpia_id}.approved_on") if "approved_on" in fields else None
        if status == "approved" and approved_on is None:
            doc.fail(node, f"assessments.{dpia_id}.approved_on", "an approved assessment needs its approval date")
        out[dpia_id] = Assessment(
            id=dpia_id,
            activity=doc.string(fields["activity"][1], f"assessments.{dpia_id}.activity"),
            status=status,
            approved_on=approved_on,
            approved_by=doc.string(fields["approved_by"][1], "approved_by") if "approved_by" in fields else "",
            document=doc.string(fields["document"][1], "document") if "document" in fields else "",
        )
    return out


def _transfers(path: Path) -> tuple[str, dict[str, TransferMechanism]]:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    if "coordinator" not in top:
        doc.fail(doc.root, "coordinator", "missing: name the coordinator's country (coordinator: {country: GB})")
    coordinator = _text_map(doc, top["coordinator"], "coordinator")
    country = coordinator.get("country", "")
    if not _COUNTRY.fullmatch(country):
        doc.fail(top["coordinator"], "coordinator.country", "an ISO 3166-1 alpha-2 code, e.g. GB")
    mechanisms: dict[str, TransferMechanism] = {}
    if "mechanisms" in top and top["mechanisms"].tag != "tag:yaml.org,2002:null":
        for store, _, node in doc.mapping(top["mechanisms"], "mechanisms"):
            fields = {k: v for k, _, v in doc.mapping(node, f"mechanisms.{store}")}
            for required in ("mechanism", "reference", "since"):
                if required not in fields:
                    doc.fail(node, f"mechanisms.{store}.{required}", "missing")
            mechanism = doc.string(fields["mechanism"], f"mechanisms.{store}.mechanism")
            if mechanism not in MECHANISMS:
                doc.fail(fields["mechanism"], f"mechanisms.{store}.mechanism", f"use one of {', '.join(MECHANISMS)}")
            mechanisms[store] = TransferMechanism(
                store=store,
                mechanism=mechanism,
                reference=doc.string(fields["reference"], f"mechanisms.{store}.reference"),
                since=_date(doc, fields["since"], f"mechanisms.{store}.since"),
            )
    return country, mechanisms


def _adequacy(path: Path) -> Adequacy:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    for required in ("source", "eea", "adequate", "country_names"):
        if required not in top:
            doc.fail(doc.root, required, "missing")
    names: dict[str, tuple[str, ...]] = {}
    for name, _, node in doc.mapping(top["country_names"], "country_names"):
        codes = tuple(doc.string(n, f"country_names.{name}") for n in doc.sequence(node, f"country_names.{name}"))
        for code in codes:
            if not _COUNTRY.fullmatch(code):
                doc.fail(node, f"country_names.{name}", f"{code!r} is not an ISO 3166-1 alpha-2 code (or EEA)")
        names[name] = codes
    return Adequacy(
        source=doc.string(top["source"], "source"),
        eea=frozenset(_strings(doc, top["eea"], "eea")),
        adequate=_text_map(doc, top["adequate"], "adequate"),
        country_names=names,
    )


def _sensitivity(path: Path) -> Sensitivity:
    doc = YamlDoc(path)
    top = {k: v for k, _, v in doc.mapping(doc.root, "")}
    for required in ("gdpr_special", "ccpa_sensitive", "art9_conditions", "ccpa_permitted_uses"):
        if required not in top:
            doc.fail(doc.root, required, "missing")
    return Sensitivity(*(_strings(doc, top[k], k) for k in ("gdpr_special", "ccpa_sensitive", "art9_conditions", "ccpa_permitted_uses")))


def load_records(directory: Path | None = None) -> Records:
    """Every record file in ``directory`` (default: the package's ``policies/records``)."""
    base = Path(directory) if directory is not None else RECORDS_DIR
    if not base.is_dir():
        raise ConfigError(f"{base}: no such records directory; set compliance.records to a directory with processing.yaml")
    from siloguard._files import parsed_once

    return parsed_once("records", base, "*.yaml", lambda: _load_records(base))


def _load_records(base: Path) -> Records:
    controller, activities = _processing(base / "processing.yaml")
    coordinator, transfers = _transfers(base / "transfers.yaml")
    return Records(
        controller=controller,
        activities=activities,
        assessments=_assessments(base / "dpia.yaml"),
        coordinator_country=coordinator,
        transfers=transfers,
        adequacy=_adequacy(base / "adequacy.yaml"),
        sensitivity=_sensitivity(base / "sensitive.yaml"),
        directory=base,
    )
