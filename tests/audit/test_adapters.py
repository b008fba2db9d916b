"""The gate's dict-shaped decision events reach the audit log through DecisionRecorderAdapter."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from siloguard.audit import InMemoryAuditSink
from siloguard.audit.adapters import DecisionRecorderAdapter
from siloguard.audit.log import AuditLog
from siloguard.errors import AuditError


def _gate_decision(**changes: Any) -> dict[str, Any]:
    """The shape `policies.gate.Gate` emits (its `_emit`), with made-up values."""
    event = {
        "type": "gate.decision",
        "decision_id": str(uuid.uuid4()),
        "time": "2026-03-02T09:30:15.123456+00:00",
        "store": "france",
        "actor": "subject:v1.3f9a0c5e7b1d2a4f9e8d7c6b5a493827",  # a privacy.pseudonyms pseudonym
        "role": "data_subject",
        "action": "gate.read",
        "resource": "dataset:france_transactions",
        "purpose": "essential.service.operations",
        "lawful_basis": "contract",
        "decision": "deny",
        "reason_code": "not_own_data",
        "reason": "a data subject may only receive rows about themself (asked by Jane Doe <jane.doe@example.com>)",
        "policy": [{"category": "user.contact.email", "effect": "deny"}],
        "columns_out": ["invoice_no"],
        "counts": {"rows_in": 12, "rows_out": 0, "rows_without_basis": 0, "columns_in": 5, "columns_out": 0},
    }
    event.update(changes)
    return event


def test_a_gate_decision_becomes_an_audit_event_with_its_id_time_and_counts() -> None:
    sink = InMemoryAuditSink()
    decision = _gate_decision()
    DecisionRecorderAdapter(sink).record(decision)
    (event,) = sink.events
    assert event.event_id == decision["decision_id"]
    assert (event.actor, event.action, event.resource, event.purpose) == (
        decision["actor"], "gate.read", "dataset:france_transactions", "essential.service.operations")
    assert (event.decision, event.reason, event.store) == ("deny", "not_own_data", "france")
    assert dict(event.counts) == decision["counts"]
    assert event.time.isoformat() == "2026-03-02T09:30:15.123456+00:00"
    assert b"jane" not in event.canonical()  # the free-text reason is not kept


def test_the_adapter_writes_to_the_real_log(audit_log: AuditLog, keys) -> None:  # type: ignore[no-untyped-def]
    adapter = DecisionRecorderAdapter(audit_log)
    for i in range(3):
        adapter.record(_gate_decision(decision="allow", reason_code="allowed", counts={"rows_in": i, "rows_out": i}))
    audit_log.sign_head()
    assert audit_log.verify(keys.public_key).tree_size == 3


@pytest.mark.parametrize(
    "change",
    [{"actor": None}, {"time": "yesterday"}, {"purpose": "Marketing"}, {"counts": {"rows": 1.5}}, {"decision": "perhaps"}],
)
def test_a_malformed_decision_is_refused_so_the_gate_releases_nothing(change: dict[str, Any]) -> None:
    sink = InMemoryAuditSink()
    with pytest.raises(AuditError):
        DecisionRecorderAdapter(sink).record(_gate_decision(**change))
    missing = _gate_decision()
    del missing["resource"]
    with pytest.raises(AuditError, match=r"missing or malformed field \('resource'\)|resource"):
        DecisionRecorderAdapter(sink).record(missing)
    assert len(sink) == 0
