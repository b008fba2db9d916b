"""The incident register: personal-data breaches, their legal clocks, their notifications.

An officer opens an incident when the organisation becomes aware of a breach (``siloguard
incident open``), updates what is known, records each notification (the supervisory authority,
the people affected) and closes it. Which notifications are due, and by when, follows from
the jurisdictions of the affected stores and the clocks in ``breach_clocks.yaml`` next to this
module (GDPR Art. 33: 72 hours to the authority unless the breach is unlikely to result in a
risk; Art. 34: the people affected, when the risk is high; Cal. Civ. Code 1798.82). Every step is
an audit event with ids and counts only; the register keeps a short summary, which must not
name anyone (it is refused if it holds an e-mail address, a phone number or a long number).

The ``breach-notification`` rule of ``siloguard check`` fails while a due notification is late.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Engine

from siloguard._yaml import YamlDoc
from siloguard.errors import IncidentError
from siloguard.storage.orm import incidents as table

__all__ = [
    "CLOCKS_PATH", "KINDS", "RISKS", "SEVERITIES", "Clock", "Due", "Incident", "IncidentError", "IncidentRegister",
    "clock_words", "load_clocks",
]

CLOCKS_PATH = Path(__file__).with_name("breach_clocks.yaml")
#: EDPB Guidelines 9/2022: a breach of confidentiality, integrity or availability.
KINDS = ("confidentiality", "integrity", "availability")
SEVERITIES = ("low", "medium", "high")
RISKS = ("unlikely", "risk", "high")
PARTIES = ("authority", "subjects")
_DURATION = TypeAdapter(timedelta)
#: Incident ids end in letters: readable, and never a run of digits the audit log would refuse.
_LETTERS = "abcdefghjkmnpqrstuvwxyz"
_DATES = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b")
#: What a summary must not hold: it is a register entry, not a place for anyone's data.
_PERSONAL = re.compile(r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}|\+?\d[\d ()./-]{7,}\d|\b\d{5,}\b")


@dataclass(frozen=True)
class Clock:
    jurisdiction: str
    party: str  # authority | subjects
    deadline: timedelta
    applies_to: tuple[str, ...]
    min_subjects: int
    statutory: bool
    source: str


@dataclass(frozen=True)
class Due:
    """One notification an incident owes: to whom, by when, under which clock, and whether it was made."""

    clock: Clock
    due_at: datetime
    done_at: datetime | None

    def late(self, now: datetime) -> bool:
        return (self.done_at or now) > self.due_at

    def state(self, now: datetime) -> str:
        if self.done_at is not None:
            return "made late" if self.done_at > self.due_at else "made"
        return "overdue" if now > self.due_at else "due"


@dataclass(frozen=True)
class Incident:
    id: str
    kind: str
    severity: str
    risk: str
    aware_at: datetime
    opened_at: datetime
    stores: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    subjects: int
    records: int
    summary: str
    authority_notified_at: datetime | None = None
    subjects_notified_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str | None = None
    dues: tuple[Due, ...] = field(default=())

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def to_json(self, now: datetime) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "id": self.id, "kind": self.kind, "severity": self.severity, "risk": self.risk,
            "aware_at": iso(self.aware_at), "opened_at": iso(self.opened_at), "stores": list(self.stores),
            "jurisdictions": list(self.jurisdictions), "subjects": self.subjects, "records": self.records,
            "summary": self.summary, "authority_notified_at": iso(self.authority_notified_at),
            "subjects_notified_at": iso(self.subjects_notified_at), "closed_at": iso(self.closed_at),
            "close_reason": self.close_reason,
            "notifications": [
                {"to": d.clock.party, "jurisdiction": d.clock.jurisdiction, "due_at": iso(d.due_at), "made_at": iso(d.done_at),
                 "state": d.state(now), "statutory": d.clock.statutory, "source": d.clock.source}
                for d in self.dues
            ],
        }


@lru_cache(maxsize=4)
def load_clocks(path: Path = CLOCKS_PATH) -> tuple[Clock, ...]:
    """The clocks file, checked (``file:line: key: problem`` on a bad value)."""
    doc = YamlDoc(path)
    clocks = []
    for jurisdiction, _, parties in doc.mapping(doc.root, ""):
        for party, party_node, spec in doc.mapping(parties, jurisdiction):
            where = f"{jurisdiction}.{party}"
            if party not in PARTIES:
                doc.fail(party_node, where, f"the party is one of {', '.join(PARTIES)}")
            fields = {k: v for k, _, v in doc.mapping(spec, where)}
            for required in ("deadline", "applies_to", "statutory", "source"):
                if required not in fields:
                    doc.fail(spec, f"{where}.{required}", "missing")
            try:
                deadline = _DURATION.validate_python(doc.string(fields["deadline"], f"{where}.deadline"))
            except ValidationError:
                doc.fail(fields["deadline"], f"{where}.deadline", "an ISO 8601 duration such as PT72H or P30D")
            applies = tuple(doc.string(n, f"{where}.applies_to") for n in doc.sequence(fields["applies_to"], f"{where}.applies_to"))
            if not applies or set(applies) - set(RISKS):
                doc.fail(fields["applies_to"], f"{where}.applies_to", f"risk levels among {', '.join(RISKS)}")
            minimum = doc.integer(fields["min_subjects"], f"{where}.min_subjects") if "min_subjects" in fields else 0
            clocks.append(Clock(jurisdiction, party, deadline, applies, minimum, doc.boolean(fields["statutory"], f"{where}.statutory"),
                                doc.string(fields["source"], f"{where}.source")))
    return tuple(clocks)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _choice(name: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise IncidentError(f"--{name} {value!r}: use one of {', '.join(allowed)}")
    return value


def _count(name: str, value: int) -> int:
    if not isinstance(value, int) or value < 0:
        raise IncidentError(f"--{name} {value!r}: a count of 0 or more (an estimate is fine; update it later)")
    return value


def _summary(text: str) -> str:
    text = " ".join((text or "").split())
    if not 3 <= len(text) <= 500:
        raise IncidentError("--summary: say what happened in 3 to 500 characters (no names, addresses or numbers of anyone)")
    if _PERSONAL.search(_DATES.sub(" ", text)):  # dates and times are fine: when it happened is the point
        raise IncidentError("--summary holds what looks like an e-mail address, a phone number or an id: describe the "
                            "breach without anyone's data (names are not detected: leave them out too; the register "
                            "is read by officers and the report)")
    return text


class IncidentRegister:
    """The ``incidents`` table of the privacy service's database, with an audit event per step."""

    def __init__(self, engine: Engine, audit: Any, *, clock: Any = None, clocks: tuple[Clock, ...] | None = None,
                 default_jurisdiction: str = "gdpr") -> None:
        self.engine, self.audit = engine, audit
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.clocks = clocks if clocks is not None else load_clocks()
        self.default_jurisdiction = default_jurisdiction

    # ---- reading ------------------------------------------------------------------------------
    def _dues(self, row: dict[str, Any]) -> tuple[Due, ...]:
        aware = _utc(row["aware_at"])
        made = {"authority": _utc(row["authority_notified_at"]), "subjects": _utc(row["subjects_notified_at"])}
        out = []
        for jur in json.loads(row["jurisdictions"]):
            for c in self.clocks:
                if c.jurisdiction == jur and row["risk"] in c.applies_to and row["subjects"] >= c.min_subjects:
                    out.append(Due(c, aware + c.deadline, made[c.party]))  # type: ignore[operator]
        return tuple(sorted(out, key=lambda d: (d.due_at, d.clock.party, d.clock.jurisdiction)))

    def _dues_of(self, incident: Incident) -> tuple[Due, ...]:
        return self._dues({"aware_at": incident.aware_at, "authority_notified_at": incident.authority_notified_at,
                           "subjects_notified_at": incident.subjects_notified_at, "jurisdictions": json.dumps(list(incident.jurisdictions)),
                           "risk": incident.risk, "subjects": incident.subjects})

    def _incident(self, row: dict[str, Any]) -> Incident:
        return Incident(
            id=row["id"], kind=row["kind"], severity=row["severity"], risk=row["risk"], aware_at=_utc(row["aware_at"]),  # type: ignore[arg-type]
            opened_at=_utc(row["opened_at"]), stores=tuple(json.loads(row["stores"])),  # type: ignore[arg-type]
            jurisdictions=tuple(json.loads(row["jurisdictions"])), subjects=row["subjects"], records=row["records"],
            summary=row["summary"], authority_notified_at=_utc(row["authority_notified_at"]),
            subjects_notified_at=_utc(row["subjects_notified_at"]), closed_at=_utc(row["closed_at"]),
            close_reason=row["close_reason"], dues=self._dues(row),
        )

    def get(self, incident_id: str) -> Incident:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == incident_id)).mappings().first()
        if row is None:
            raise IncidentError(f"no incident {incident_id!r}: siloguard incident list shows them")
        return self._incident(dict(row))

    def list(self, *, open_only: bool = False) -> list[Incident]:
        query = sa.select(table).order_by(table.c.aware_at, table.c.id)
        if open_only:
            query = query.where(table.c.closed_at.is_(None))
        with self.engine.connect() as conn:
            return [self._incident(dict(r)) for r in conn.execute(query).mappings()]

    def overdue(self, now: datetime | None = None) -> list[tuple[Incident, Due]]:
        """Notifications past their time and not made, of every incident (closed ones too: closing does not excuse them)."""
        now = now or self.clock()
        return [(i, d) for i in self.list() for d in i.dues if d.done_at is None and now > d.due_at]

    # ---- writing ------------------------------------------------------------------------------
    def _event(self, action: str, incident: Incident, *, actor: str, reason: str, extra: dict[str, int] | None = None) -> None:
        from siloguard.audit.events import AuditEvent

        counts = {"subjects": incident.subjects, "records": incident.records, "stores": len(incident.stores)}
        for due in incident.dues:
            counts[f"{due.clock.party}_{due.clock.jurisdiction}_due_epoch_s"] = int(due.due_at.timestamp())
        counts.update(extra or {})
        self.audit.append([AuditEvent(actor=actor, action=action, resource=f"incident:{incident.id}", purpose="essential.legal_obligation",
                                      reason=reason, counts=counts, time=self.clock())])

    def open(self, *, kind: str, severity: str, risk: str, aware_at: datetime | None, stores: list[str], subjects: int,
             records: int, summary: str, jurisdictions: dict[str, str], actor: str) -> Incident:
        now = self.clock()
        aware = _utc(aware_at) or now
        if aware > now + timedelta(minutes=5):
            raise IncidentError(f"--aware-at {aware.isoformat()} is in the future: give when you became aware of the breach")
        if not stores:
            raise IncidentError("--store: name at least one affected store (repeat --store for each)")
        unknown = sorted(set(stores) - set(jurisdictions)) if jurisdictions else []
        if unknown:
            raise IncidentError(f"--store {', '.join(unknown)}: not a store of this run ({', '.join(sorted(jurisdictions))})")
        jurs = sorted({jurisdictions.get(s, self.default_jurisdiction) for s in stores})
        row = {
            "id": f"inc-{aware:%Y-%m-%d}-{''.join(secrets.choice(_LETTERS) for _ in range(6))}", "kind": _choice("kind", kind, KINDS),
            "severity": _choice("severity", severity, SEVERITIES), "risk": _choice("risk", risk, RISKS),
            "aware_at": aware, "opened_at": now, "stores": json.dumps(sorted(set(stores))), "jurisdictions": json.dumps(jurs),
            "subjects": _count("subjects", subjects), "records": _count("records", records), "summary": _summary(summary),
            "authority_notified_at": None, "subjects_notified_at": None, "closed_at": None, "close_reason": None, "updated_at": now,
        }
        incident = self._incident(row)
        # Audited first: if the log refuses, nothing is written; a register row is never unaudited.
        self._event("incident.opened", incident, actor=actor, reason=f"{incident.kind}-{incident.risk}")
        with self.engine.begin() as conn:
            conn.execute(table.insert(), row)
        return incident

    def update(self, incident_id: str, *, actor: str, severity: str | None = None, risk: str | None = None,
               subjects: int | None = None, records: int | None = None, summary: str | None = None) -> Incident:
        changes: dict[str, Any] = {}
        if severity is not None:
            changes["severity"] = _choice("severity", severity, SEVERITIES)
        if risk is not None:
            changes["risk"] = _choice("risk", risk, RISKS)
        if subjects is not None:
            changes["subjects"] = _count("subjects", subjects)
        if records is not None:
            changes["records"] = _count("records", records)
        if summary is not None:
            changes["summary"] = _summary(summary)
        if not changes:
            raise IncidentError("nothing to update: give --severity, --risk, --subjects, --records or --summary")
        current = self.get(incident_id)
        if not current.open:
            raise IncidentError(f"incident {incident_id} is closed: open a new one for new facts")
        self._event("incident.updated", replace(current, **changes, dues=self._dues_of(replace(current, **changes))), actor=actor,
                    reason="-".join(sorted(changes)).replace("_", "-"))
        self._change(incident_id, changes)
        return self.get(incident_id)

    def notify(self, incident_id: str, party: str, *, actor: str, at: datetime | None = None) -> Incident:
        party = _choice("to", party, PARTIES)
        when = _utc(at) or self.clock()
        before = self.get(incident_id)
        if when < before.aware_at:
            raise IncidentError(f"--at {when.isoformat()} is before the incident was known ({before.aware_at.isoformat()})")
        if when > self.clock() + timedelta(minutes=5):
            raise IncidentError(f"--at {when.isoformat()} is in the future: record a notification once it was made")
        if getattr(before, f"{party}_notified_at") is not None:
            raise IncidentError(f"incident {incident_id}: the {party} notification is already recorded")
        after = replace(before, **{f"{party}_notified_at": when})
        late = [d for d in self._dues_of(after) if d.clock.party == party and d.due_at < when]
        self._event("incident.notified", before, actor=actor, reason=f"{party}-late" if late else party,
                    extra={"notified_epoch_s": int(when.timestamp())})
        self._change(incident_id, {f"{party}_notified_at": when})
        return self.get(incident_id)

    def close(self, incident_id: str, *, actor: str, reason: str) -> Incident:
        if not re.fullmatch(r"[a-z][a-z-]{2,63}", reason or ""):
            raise IncidentError("--reason: a short code in lower-case words joined by -, such as resolved or false-alarm")
        current = self.get(incident_id)
        if not current.open:
            raise IncidentError(f"incident {incident_id} is already closed")
        self._event("incident.closed", current, actor=actor, reason=reason)
        self._change(incident_id, {"closed_at": self.clock(), "close_reason": reason})
        return self.get(incident_id)

    def _change(self, incident_id: str, values: dict[str, Any]) -> None:
        current = self.get(incident_id)
        if not current.open and "closed_at" in values:
            raise IncidentError(f"incident {incident_id} is already closed")
        if not current.open and "closed_at" not in values and not any(k.endswith("_notified_at") for k in values):
            raise IncidentError(f"incident {incident_id} is closed: open a new one for new facts")
        with self.engine.begin() as conn:
            conn.execute(table.update().where(table.c.id == incident_id).values(**values, updated_at=self.clock()))


def clock_words(clock: Clock) -> str:
    """``authority within 72 hours (law)``, ``subjects within 30 days (target: "without undue delay")``."""
    hours = clock.deadline.total_seconds() / 3600
    span = f"{hours:g} hours" if hours < 96 else f"{clock.deadline.days} days"
    basis = "law" if clock.statutory else 'target for "without undue delay"'
    return f"{clock.party} within {span} ({basis})"
