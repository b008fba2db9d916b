"""Audit events and their canonical bytes.

An event says who (``actor``) did what (``action``) to which data (``resource``) for
which ``purpose``, what was decided and why (``decision``, ``reason``), how many records
were involved (``counts``), and which federated round, store or data-subject request it
belongs to. It never holds personal data, and the checks below make the common ways of
leaking it fail loudly:

- every text field is a short **lowercase identifier**: ``a-z``, ``0-9`` and ``. _ : / -``,
  at most 128 characters. No spaces, capitals, ``@`` or ``+``: names, e-mail addresses,
  formatted phone numbers, card numbers, IBANs and street addresses do not fit.
- in ``actor``, ``resource``, ``store`` and ``request`` every ``:``/``/``-separated part
  contains a letter: ``customer:17850``, ``ip:203.0.113.7`` or ``dob:1985-02-17`` are refused.
- no field has a run of 5 or more digits (raw customer numbers, phone and card numbers,
  IBANs), except inside a UUID, a keyed pseudonym ``v<version>.<32 hex>`` (the form
  ``privacy.pseudonyms`` makes) or a blinded subject reference ``b.<32 hex>``, and except
  in the event's store id (below). A data subject appears only as a blinded reference, e.g.
  ``subject:b.3f9a0c…``, keyed per subject and unlinkable once the subject is erased
  (``SubjectVault.audit_ref``), never as a raw id.
- a **store id** is a code the operator chose (``store-31782``), never a record value, so it
  may hold a store number: ``store`` may have a run of 5 to 9 digits if it is a store id
  (``a-z``, ``0-9``, ``_`` and ``-`` only, as the API and key stores require, starting with a
  letter like every id here, at most 64 characters) and each such run is a whole
  ``-``/``_``-separated word. So ``store-31782`` is accepted, while ``31782`` (no letter),
  ``gb82west12345698765432`` (a lowercased IBAN: the run is glued to letters) and
  ``store-4111111111111111`` (a card number: more than 9 digits) are refused. In ``actor`` and
  ``resource`` a ``:``/``/``-separated part exactly equal to the event's own ``store`` is
  accepted on the same grounds (``client:store-31782``, ``silo:store-31782/transactions``);
  any other part with a 5+ digit run is refused as before: ``customer:17850``, or
  ``client:store-31782`` on an event of another store or of no store.
- ``counts`` maps names to integers (no floats: ``epsilon_e6`` holds a privacy loss in
  millionths); a name is lowercase words joined by ``_``, each word letters then optional
  digits (``records_kept``, ``epsilon_e6``); booleans are not counts.
- ``reason`` is a code like ``consent-missing``, with the same rules as the ids.

What syntax cannot catch: a personal value already rewritten into id form (a name turned
into ``jane-doe``). Callers build ids from their own pseudonyms and store names, never from
record values; see SECURITY.md, "Audit trail".

A value that breaks a rule is refused with :class:`~siloguard.errors.AuditError` naming the
field and the rule, never echoing the value.

The canonical form is JSON with sorted keys, no whitespace, ASCII only and integers only,
which for this restricted alphabet is also the RFC 8785 (JCS) form. Its UTF-8 bytes are the
Merkle leaf (``SHA-256(0x00 || bytes)``); :meth:`AuditEvent.from_canonical` refuses bytes that
are not exactly what :meth:`AuditEvent.canonical` would produce.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Literal, NewType

from siloguard.errors import AuditError

__all__ = ["DECISIONS", "SCHEMA_VERSION", "AuditEvent", "Decision", "EventId", "new_event_id", "store_id_ok"]

SCHEMA_VERSION = 1
EventId = NewType("EventId", str)
Decision = Literal["allow", "deny", "info"]
DECISIONS: tuple[str, ...] = ("allow", "deny", "info")

_MAX_COUNTS = 32
_MAX_COUNT = 2**53 - 1  # exact in every JSON implementation (RFC 8785 / I-JSON)

_IDENT = re.compile(r"[a-z][a-z0-9._:/-]{0,127}")
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,31}(?:\.[a-z][a-z0-9_-]{0,31}){0,3}")
_PURPOSE = re.compile(r"(?=.{1,128}$)[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)*")  # fideslang-style dotted names
_REASON = re.compile(r"[a-z][a-z0-9._:/-]{0,127}")
_COUNT_KEY = re.compile(r"(?=.{1,64}$)[a-z]+[0-9]*(?:_[a-z]+[0-9]*)*")
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SEGMENT = re.compile(r"[:/]")
_LETTER = re.compile(r"[a-z]")
# Random ids that may hold digit runs: UUIDs and keyed pseudonyms ("v<key version>.<32 hex>",
# privacy/pseudonyms). A generic "hex token" exemption would also let "de89370400440532013000"
# (a lowercased German IBAN) through.
_RANDOM_TOKEN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f])"
    r"|(?<![0-9a-z])v[0-9]{1,4}\.[0-9a-f]{32}(?![0-9a-f])"
    r"|(?<![0-9a-z])b\.[0-9a-f]{32}(?![0-9a-f])"  # a subject's blinded reference (SubjectVault.audit_ref)
)
_HEX_LETTER = re.compile(r"[a-f]")
_DIGIT_RUN = re.compile(r"[0-9]{5}")
# A store id as the API path, api/keys and privacy/keys accept it, starting with a letter as
# every id here does; a store number is a
# whole "-"/"_"-separated word of digits, short enough not to be a card or phone number.
_STORE_ID = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_STORE_NUMBER = re.compile(r"(?<![a-z0-9])[0-9]{5,9}(?![a-z0-9])")
_SEGMENT_TEXT = re.compile(r"[^:/]+")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_KEYS = frozenset(
    {"action", "actor", "counts", "decision", "event_id", "purpose", "reason", "related", "resource", "schema", "time"}
)
_RELATED_KEYS = frozenset({"request", "round", "store"})

_SLUG_RULE = "lowercase a-z, 0-9 and . _ : / - only, at most 128 characters, no run of 5+ digits"


def new_event_id() -> EventId:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then 74
    random bits. Ids made one after another sort together, which keeps the database's
    unique index on them cheap to extend."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return EventId(str(uuid.UUID(int=value)))


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _refuse(name: str, rule: str) -> AuditError:
    return AuditError(f"audit event field {name!r} refused: {rule} (events hold pseudonymous ids and counts only)")


def _unmask(match: re.Match[str]) -> str:
    token = match.group()
    return "" if _HEX_LETTER.search(token.partition(".")[2] or token) else token  # all digits: not random


def _no_digit_run(name: str, value: str, rule: str) -> None:
    if _DIGIT_RUN.search(value) and _DIGIT_RUN.search(_RANDOM_TOKEN.sub(_unmask, value)):
        raise _refuse(name, rule)


def _check_text(name: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _refuse(name, rule)
    _no_digit_run(name, value, rule)
    return value


def _check_ident(name: str, value: object, pattern: re.Pattern[str] = _IDENT, *, store: str | None = None) -> str:
    """An id whose parts all hold a letter; with ``store`` (a store id, see ``_store_id``), a
    part exactly equal to it may hold the store's number."""
    rule = _SLUG_RULE + ", every ':'- or '/'-separated part with a letter"
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _refuse(name, rule)
    if not all(_LETTER.search(part) for part in _SEGMENT.split(value)):
        raise _refuse(name, rule)
    rest = value if store is None else _SEGMENT_TEXT.sub(lambda m: "" if m.group() == store else m.group(), value)
    _no_digit_run(name, rest, rule)
    return value


def _store_id(value: object) -> str | None:
    """``value`` if it is a store id that may carry a store number (module docstring), else None."""
    if not isinstance(value, str) or not _STORE_ID.fullmatch(value):
        return None
    if _DIGIT_RUN.search(_STORE_NUMBER.sub("", value)):
        return None
    return value


def store_id_ok(value: str) -> bool:
    """Whether the audit log accepts ``value`` as a store id (``siloguard store init`` checks names with it)."""
    try:
        _check_store(value)
    except AuditError:
        return False
    return True


def _check_store(value: object) -> str:
    store = _store_id(value)
    if store is not None:
        return store
    try:
        return _check_ident("store", value)
    except AuditError:
        raise _refuse(
            "store",
            _SLUG_RULE + " (a store id may hold one as a whole '-'-separated word of at most 9 digits), "
            "every ':'- or '/'-separated part with a letter",
        ) from None


def _check_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_COUNT:
        raise _refuse(name, f"an integer from {low} to 2**53-1")
    return value


def _format_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime(_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One fact for the audit log. Built from ids and counts; validated on construction."""

    actor: str
    action: str
    resource: str
    purpose: str
    decision: Decision = "info"
    reason: str | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    round: int | None = None
    store: str | None = None
    request: str | None = None
    event_id: EventId = field(default_factory=new_event_id)
    time: datetime = field(default_factory=_utc_now)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        store = _store_id(self.store)  # the one value a part of actor or resource may repeat
        _check_ident("actor", self.actor, store=store)
        _check_text("action", self.action, _ACTION, "dotted lowercase words such as 'gate.train' (at most 4 parts)")
        _check_ident("resource", self.resource, store=store)
        _check_text("purpose", self.purpose, _PURPOSE, "dotted lowercase names such as 'marketing.advertising' (at most 128)")
        if self.decision not in DECISIONS:
            raise _refuse("decision", "one of " + ", ".join(DECISIONS))
        if self.reason is not None:
            _check_ident("reason", self.reason, _REASON)
        if not isinstance(self.counts, Mapping) or len(self.counts) > _MAX_COUNTS:
            raise _refuse("counts", f"a mapping of at most {_MAX_COUNTS} names to integers")
        counts: dict[str, int] = {}
        for key, value in self.counts.items():
            rule = "names are lowercase words joined by _ (a word may end in digits, as in epsilon_e6), at most 64 characters"
            _check_text("counts", key, _COUNT_KEY, rule)
            counts[key] = _check_int(f"counts.{key}", value, low=-_MAX_COUNT)
        object.__setattr__(self, "counts", MappingProxyType(dict(sorted(counts.items()))))
        if self.round is not None:
            _check_int("round", self.round, low=0)
        if self.store is not None:
            _check_store(self.store)
        if self.request is not None:
            _check_ident("request", self.request)
        if not isinstance(self.event_id, str) or not _EVENT_ID.fullmatch(self.event_id):
            raise _refuse("event_id", "a lowercase UUID such as new_event_id() makes")
        if not isinstance(self.time, datetime) or self.time.tzinfo is None or self.time.utcoffset() is None:
            raise _refuse("time", "a timezone-aware datetime")
        if self.time.astimezone(timezone.utc).year < 1970:
            raise _refuse("time", "a time after 1970")
        if self.schema_version != SCHEMA_VERSION:
            raise _refuse("schema_version", f"{SCHEMA_VERSION}, the only version this siloguard writes")

    # ---- canonical form ----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The event as the JSON object that is hashed (a new dict each call)."""
        return {
            "action": self.action,
            "actor": self.actor,
            "counts": dict(self.counts),
            "decision": self.decision,
            "event_id": self.event_id,
            "purpose": self.purpose,
            "reason": self.reason,
            "related": {"request": self.request, "round": self.round, "store": self.store},
            "resource": self.resource,
            "schema": self.schema_version,
            "time": _format_time(self.time),
        }

    def canonical(self) -> bytes:
        """Sorted keys, no whitespace, ASCII, integers only: the bytes hashed as a Merkle leaf."""
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")

    @classmethod
    def from_json(cls, data: object) -> AuditEvent:
        """Build and validate an event from its JSON object (as :meth:`to_json` makes)."""
        if not isinstance(data, dict) or set(data) != _KEYS:
            raise AuditError("audit event refused: not an object with exactly the schema's fields")
        related = data["related"]
        if not isinstance(related, dict) or set(related) != _RELATED_KEYS:
            raise AuditError("audit event refused: 'related' must hold exactly request, round and store")
        time = data["time"]
        if not isinstance(time, str) or not _TIME.fullmatch(time):
            raise _refuse("time", "UTC time as YYYY-MM-DDTHH:MM:SS.ffffffZ")
        try:
            when = datetime.strptime(time, _TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            raise _refuse("time", "a real calendar time") from None
        counts = data["counts"]
        if not isinstance(counts, dict):
            raise _refuse("counts", "an object of names to integers")
        return cls(
            actor=data["actor"],
            action=data["action"],
            resource=data["resource"],
            purpose=data["purpose"],
            decision=data["decision"],
            reason=data["reason"],
            counts=counts,
            round=related["round"],
            store=related["store"],
            request=related["request"],
            event_id=data["event_id"],
            time=when,
            schema_version=data["schema"],
        )

    @classmethod
    def from_canonical(cls, body: bytes) -> AuditEvent:
        """Parse canonical bytes; refuse anything that does not re-serialise to the same bytes."""

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            out = dict(pairs)
            if len(out) != len(pairs):
                raise AuditError("audit event refused: a key appears twice")
            return out

        try:
            data = json.loads(bytes(body).decode("ascii"), object_pairs_hook=no_duplicates, parse_float=_no_float)
        except (UnicodeDecodeError, ValueError):
            raise AuditError("audit event refused: not ASCII JSON without floats") from None
        event = cls.from_json(data)
        if event.canonical() != bytes(body):
            raise AuditError("audit event refused: bytes are not in canonical form")
        return event


def _no_float(_text: str) -> Any:
    raise ValueError("floats are not allowed")
