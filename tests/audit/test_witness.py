"""Witnessed heads: the coordinator records a store's signed heads; the store's log is checked against them."""

from __future__ import annotations

from pathlib import Path

import pytest

from siloguard.audit.log import AuditLog
from siloguard.audit.witness import head_from_counts, head_to_counts, public_key_text, verify_witnessed, witness, witnessed_heads
from siloguard.errors import AuditIntegrityError
from tests.audit.helpers import gate_event, make_keys


def _head(audit_log: AuditLog, first: int, n: int):  # noqa: ANN202
    audit_log.append([gate_event(i) for i in range(first, first + n)])
    return audit_log.sign_head()


def test_a_head_survives_the_trip_through_audit_counts(audit_log: AuditLog) -> None:
    head = _head(audit_log, 0, 5)
    assert head_from_counts(head_to_counts(head)) == head


def test_when_heads_are_honest_then_they_are_witnessed_and_the_log_verifies_against_them(audit_log: AuditLog, keys) -> None:
    key = public_key_text(keys.public_key)
    first, event1 = witness("germany", _head(audit_log, 0, 4).to_json(), key, [], server_round=1)
    second, event2 = witness("germany", _head(audit_log, 4, 3).to_json(), key, [first.head], server_round=2)
    assert first.accepted and second.accepted
    assert (event1.action, event1.decision, event1.store) == ("audit.head_witnessed", "info", "germany")
    heads = witnessed_heads([event1, event2])["germany"]
    assert [h.tree_size for h in heads] == [4, 7]
    assert len(verify_witnessed(audit_log, keys.public_key, heads)) == 2


def test_when_a_store_quietly_rewrites_its_log_then_the_witnessed_head_catches_it(audit_log: AuditLog, keys, tmp_path: Path) -> None:
    from siloguard.storage import create_engine, upgrade_database

    seen, event = witness("germany", _head(audit_log, 0, 4).to_json(), public_key_text(keys.public_key), [])
    # The store rebuilds its log from scratch with one decision changed: a log that verifies on
    # its own (every node and head recomputed and signed with the store's key).
    engine = create_engine(f"sqlite:///{tmp_path / 'rewritten.db'}")
    upgrade_database(engine)
    rewritten = AuditLog(engine, signer=keys.signer, head_every_events=0, head_every_seconds=0)
    events = [gate_event(i) for i in range(4)]
    events[1] = gate_event(101)
    rewritten.append(events)
    rewritten.sign_head()
    assert rewritten.verify(keys.public_key).tree_size == 4  # fine by itself
    with pytest.raises(AuditIntegrityError, match="no longer"):
        verify_witnessed(rewritten, keys.public_key, witnessed_heads([event])["germany"])
    engine.dispose()


@pytest.mark.parametrize("case", ["other-key", "went-back", "bad-signature"])
def test_when_a_head_is_not_trustworthy_then_it_is_refused_and_recorded_as_refused(audit_log: AuditLog, keys, tmp_path: Path, case: str) -> None:
    key = public_key_text(keys.public_key)
    big = _head(audit_log, 0, 6)
    first, _ = witness("germany", big.to_json(), key, [])
    if case == "other-key":
        other = make_keys(tmp_path, "other")
        resigned = other.signer.sign(seq=big.seq + 1, tree_size=big.tree_size, root_hash=big.root_hash,
                                     timestamp_ms=big.timestamp_ms + 1)
        result, event = witness("germany", resigned.to_json(), public_key_text(other.public_key), [first.head])
        assert result.reason == "key-changed"
    elif case == "went-back":
        older = dict(big.to_json())
        small = _head(audit_log, 6, 1)  # a genuine later head, then claim an earlier, smaller one
        result, event = witness("germany", {**small.to_json(), **{k: older[k] for k in older}}, key, [first.head, small])
        assert result.reason == "log-went-back"
    else:
        forged = dict(big.to_json())
        forged["tree_size"] = big.tree_size + 1
        result, event = witness("germany", forged, key, [])
        assert result.reason == "bad-signature"
    assert not result.accepted
    assert (event.action, event.decision) == ("audit.head_refused", "deny")
    assert witnessed_heads([event]) == {}


def test_when_a_store_sends_a_malformed_or_forked_head_then_it_is_refused_and_the_run_goes_on(audit_log: AuditLog, keys) -> None:
    from siloguard.federation.app import witness_events
    from siloguard.federation.strategy import RoundReport

    key = public_key_text(keys.public_key)
    head = _head(audit_log, 0, 3)
    report = RoundReport(1)
    report.heads["germany"] = {**head.to_json(), "key_id": "zz", "public-key": key}
    report.heads["france"] = {"format": "nonsense", "public-key": key}
    events = witness_events(report, {})  # no exception: a store cannot stop the coordinator's run
    assert sorted((e.store, e.action, e.reason) for e in events) == [
        ("france", "audit.head_refused", "malformed"), ("germany", "audit.head_refused", "malformed")]
    # The same size with another root: a fork, refused at once.
    other = keys.signer.sign(seq=head.seq + 1, tree_size=head.tree_size, root_hash=bytes(32), timestamp_ms=head.timestamp_ms + 1)
    result, event = witness("germany", other.to_json(), key, [head])
    assert (result.reason, event.decision) == ("log-forked", "deny")
