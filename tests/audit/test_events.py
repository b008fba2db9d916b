"""Audit events: validation, canonical bytes, the sink protocol and its fake."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from siloguard.audit import AuditEvent, AuditSink, InMemoryAuditSink, new_event_id
from siloguard.audit.merkle import leaf_hash
from siloguard.errors import AuditError

FIXED = {
    "actor": "store:france",
    "action": "gate.train",
    "resource": "silo:france/transactions",
    "purpose": "recommendation",
    "decision": "allow",
    "reason": "policy-allow",
    "counts": {"records_kept": 90, "records_in": 100},
    "round": 3,
    "store": "france",
    "request": None,
    "event_id": "01a2b3c4-d5e6-7f00-8a1b-2c3d4e5f6a7b",
    "time": datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=timezone.utc),
}
GOLDEN = (
    b'{"action":"gate.train","actor":"store:france","counts":{"records_in":100,"records_kept":90},'
    b'"decision":"allow","event_id":"01a2b3c4-d5e6-7f00-8a1b-2c3d4e5f6a7b","purpose":"recommendation",'
    b'"reason":"policy-allow","related":{"request":null,"round":3,"store":"france"},'
    b'"resource":"silo:france/transactions","schema":1,"time":"2026-03-02T09:30:15.123456Z"}'
)


def _event(**changes: Any) -> AuditEvent:
    return AuditEvent(**{**FIXED, **changes})


def test_canonical_bytes_are_stable_sorted_compact_json() -> None:
    event = _event()
    assert event.canonical() == GOLDEN
    assert leaf_hash(GOLDEN) == leaf_hash(event.canonical())
    assert AuditEvent.from_canonical(GOLDEN) == event


def test_time_in_another_zone_is_stored_as_the_same_utc_instant() -> None:
    paris = timezone(timedelta(hours=1))
    assert _event(time=datetime(2026, 3, 2, 10, 30, 15, 123456, tzinfo=paris)).canonical() == GOLDEN


@pytest.mark.parametrize(
    "body",
    [
        GOLDEN.replace(b",", b", ", 1),  # whitespace
        GOLDEN.replace(b'{"action":"gate.train","actor":"store:france",', b'{"actor":"store:france","action":"gate.train",'),
        GOLDEN.replace(b'"round":3', b'"round":3.0'),  # a float
        GOLDEN.replace(b'"schema":1', b'"schema":1,"schema":1'),  # duplicate key
        GOLDEN.replace(b'"schema":1', b'"schema":1,"note":"x"'),  # an extra field
        GOLDEN.replace(b'"schema":1', b'"schema":2'),
        GOLDEN.replace(b"09:30:15", b"09:30:61"),
        GOLDEN.replace(b'"store:france"', b'"store:fr\\u00e1nce"'),
        GOLDEN[:-1],
        b"\xff" + GOLDEN,
    ],
    ids=["space", "key-order", "float", "duplicate-key", "extra-field", "schema-2", "bad-time", "unicode", "truncated", "not-ascii"],
)
def test_when_bytes_are_not_canonical_then_refused(body: bytes) -> None:
    with pytest.raises(AuditError):
        AuditEvent.from_canonical(body)


@pytest.mark.parametrize(
    "value",
    ["store:france", "store:united-kingdom-1", "svc:federation", "officer:compliance-1",
     "subject:v1.3f9a0c5e7b1d2a4f9e8d7c6b5a493827", "subject:v12.00000000000000000000000000000a01",
     "silo:germany/transactions", "req-01a2b3c4-d5e6-7f00-8a1b-2c3d4e5f6a7b", "model:global/v3"],
)
def test_pseudonymous_identifiers_are_accepted(value: str) -> None:
    assert _event(actor=value, resource=value, store=value, request=value).actor == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor", "Store:France"), ("actor", "store france"), ("actor", ""), ("actor", "x" * 200),
        ("actor", "customer:17850"), ("resource", "silo:france/17850"), ("store", "12345"),
        ("action", "Gate.Train"), ("action", "gate..train"), ("purpose", "recommend ation"),
        ("decision", "maybe"), ("reason", "Consent Missing"), ("request", "ticket 42"),
        ("round", -1), ("round", True), ("round", 1.0), ("event_id", "not-a-uuid"),
        ("time", datetime(2026, 1, 1)), ("schema_version", 2),
        ("counts", {"Kept": 1}), ("counts", {"kept": 1.5}), ("counts", {"kept": True}),
        ("counts", {"kept": 2**53}), ("counts", {f"c{i}": i for i in range(33)}), ("counts", [("kept", 1)]),
    ],
)
def test_when_a_field_breaks_the_rules_then_refused_naming_the_field_not_the_value(field: str, value: Any) -> None:
    with pytest.raises(AuditError) as info:
        _event(**{field: value})
    message = str(info.value)
    assert repr(field.split(".")[0]) in message or field in message
    if isinstance(value, str) and len(value) > 3:
        assert value not in message


def test_new_event_ids_are_unique_time_ordered_uuid7() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)


def test_event_is_immutable_and_counts_cannot_be_changed_after_validation() -> None:
    counts = {"kept": 1}
    event = _event(counts=counts)
    counts["kept"] = -99
    assert event.counts == {"kept": 1}
    with pytest.raises(TypeError):
        event.counts["kept"] = 5  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.actor = "store:germany"  # type: ignore[misc]


def test_fake_sink_follows_the_protocol_and_the_real_rules() -> None:
    sink = InMemoryAuditSink()
    assert isinstance(sink, AuditSink)
    first = _event(event_id=new_event_id())
    assert sink.record(first) == first.event_id
    with pytest.raises(AuditError, match="already recorded"):
        sink.record(first)
    with pytest.raises(AuditError):
        sink.record({"actor": "store:france"})  # type: ignore[arg-type]
    assert sink.actions() == ["gate.train"] and len(sink) == 1


# Finding: a store with a number in its code (store-31782) could not join, because the audit
# log refused its id ("no run of 5+ digits"). A store id is an operator-chosen code, so it may
# carry a store number in the store field and where actor or resource name that same store.
PARTNER = "store-31782"


@pytest.mark.parametrize(
    ("actor", "resource"),
    [
        (f"client:{PARTNER}", f"silo:{PARTNER}"),
        (f"store:{PARTNER}", f"silo:{PARTNER}/transactions"),
        ("svc:federation", f"model:{PARTNER}/v3"),
    ],
)
def test_when_the_store_id_holds_a_number_then_store_actor_and_resource_naming_it_are_accepted(
    actor: str, resource: str
) -> None:
    event = _event(actor=actor, resource=resource, store=PARTNER)

    assert (event.actor, event.resource, event.store) == (actor, resource, PARTNER)
    body = event.canonical()
    assert b'"store":"store-31782"' in body
    assert AuditEvent.from_canonical(body) == event
    assert AuditEvent.from_canonical(body).canonical() == body


@pytest.mark.parametrize("store", ["store_31782", "shop-31782-north", "s-123456789"])
def test_other_store_ids_with_a_store_number_are_accepted(store: str) -> None:
    event = _event(actor=f"client:{store}", resource=f"silo:{store}", store=store)
    assert AuditEvent.from_canonical(event.canonical()) == event


@pytest.mark.parametrize(
    "changes",
    [
        {"store": "31782"},  # all digits: not a store code
        {"store": "31782-north"},  # ids start with a letter
        {"store": "store-4111111111111111"},  # more than 9 digits: a card number, not a store number
        {"store": "gb82west12345698765432"},  # a digit run glued to letters (a lowercased IBAN)
        {"store": "store:31782"},  # not a store id, and a part without a letter
        {"store": "shop/a-31782"},  # not a store id: general rules
        {"actor": f"client:{PARTNER}", "store": "france"},  # names another store
        {"actor": f"client:{PARTNER}", "store": None},  # the event has no store
        {"resource": f"silo:{PARTNER}/transactions", "store": "store-31783"},
        {"actor": f"client:{PARTNER}x", "store": PARTNER},  # not exactly the store
        {"actor": f"client:x{PARTNER}", "store": PARTNER},
        {"actor": "customer:17850", "store": PARTNER},
        {"actor": f"client:{PARTNER}", "resource": f"silo:{PARTNER}/17850x", "store": PARTNER},
        {"actor": "subject:c17850", "resource": f"silo:{PARTNER}", "store": PARTNER},
        {"request": PARTNER, "store": PARTNER},  # only actor and resource may repeat the store
        {"reason": f"denied-{PARTNER}", "store": PARTNER},
    ],
)
def test_when_a_digit_run_is_not_the_events_own_store_id_then_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(AuditError) as info:
        _event(**changes)
    message = str(info.value)
    assert "31782" not in message and "17850" not in message and "4111" not in message


def test_when_canonical_bytes_name_a_numbered_store_in_the_actor_of_another_store_then_refused() -> None:
    body = _event(actor=f"client:{PARTNER}", resource=f"silo:{PARTNER}", store=PARTNER).canonical()
    with pytest.raises(AuditError):
        AuditEvent.from_canonical(body.replace(b'"store":"store-31782"', b'"store":"france"'))
