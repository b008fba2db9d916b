"""The audit log in a real database (SQLite file; PostgreSQL when configured)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.audit import AuditSink, GroupCommitSink, new_event_id
from siloguard.audit.log import AuditLog, InclusionProof
from siloguard.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from siloguard.config import Settings
from siloguard.errors import AuditError, AuditIntegrityError, StorageError
from tests.audit.helpers import Keys, gate_event


def _fill(log: AuditLog, n: int, start: int = 0) -> list[str]:
    events = [gate_event(i) for i in range(start, start + n)]
    log.append(events)
    return [e.event_id for e in events]


def test_appends_get_consecutive_indices_and_the_real_log_is_an_audit_sink(audit_log: AuditLog) -> None:
    assert isinstance(audit_log, AuditSink)
    assert audit_log.size() == 0
    assert audit_log.append([gate_event(0), gate_event(1), gate_event(2)]) == [0, 1, 2]
    event = gate_event(3)
    assert audit_log.record(event) == event.event_id
    assert audit_log.append([]) == []
    assert audit_log.size() == 4
    stored = audit_log.get(event.event_id)
    assert stored.index == 3 and stored.event == event and stored.leaf_hash == leaf_hash(event.canonical())
    assert [s.index for s in audit_log.iter_events(1, 3)] == [1, 2]


def test_a_refused_batch_writes_nothing(audit_log: AuditLog) -> None:
    ids = _fill(audit_log, 3)
    audit_log.sign_head()
    root, heads = audit_log.root(), audit_log.heads()
    clash = dataclasses.replace(gate_event(10), event_id=ids[1])
    with pytest.raises(AuditError, match="already in the audit log: nothing was written"):
        audit_log.append([gate_event(11), clash])
    twice = gate_event(12)
    with pytest.raises(AuditError, match="same event id twice"):
        audit_log.append([twice, twice])
    with pytest.raises(AuditError, match="only AuditEvent"):
        audit_log.append([gate_event(13), {"actor": "x"}])  # type: ignore[list-item]
    assert audit_log.size() == 3 and audit_log.root() == root and audit_log.heads() == heads


@pytest.mark.parametrize("n", [1, 2, 5, 13, 64, 77])
def test_roots_and_proofs_from_the_node_store_match_an_in_memory_tree(audit_log: AuditLog, keys: Keys, n: int) -> None:
    events = [gate_event(i) for i in range(n)]
    oracle = MerkleTree()
    sizes = []
    # appended in uneven batches, a head now and then
    i = 0
    while i < n:
        batch = events[i : i + 1 + (i % 7)]
        audit_log.append(batch)
        for e in batch:
            oracle.append(leaf_hash(e.canonical()))
        i += len(batch)
        if i % 3 == 0 or i == n:
            head = audit_log.sign_head()
            head.verify(keys.public_key)
            assert head.root_hash == oracle.root() and head.tree_size == i
            sizes.append(i)
    for size in sorted(set(sizes)):
        assert audit_log.root(size) == oracle.root(size)
        for index in range(0, size, max(1, size // 9)):
            path = audit_log.inclusion_path(index, size)
            assert path == oracle.inclusion_proof(index, size)
            verify_inclusion(oracle.node((0, index)), index, size, path, oracle.root(size))
    for old in sizes:
        proof = audit_log.consistency_proof(old, n)
        assert proof == oracle.consistency_proof(old, n)
        verify_consistency(old, n, oracle.root(old), oracle.root(n), proof)


def test_prove_gives_a_self_contained_proof_against_the_latest_signed_head(audit_log: AuditLog, keys: Keys) -> None:
    ids = _fill(audit_log, 20)
    with pytest.raises(AuditError, match="no signed tree head yet"):
        audit_log.prove(ids[0])
    audit_log.sign_head()
    late = _fill(audit_log, 3, start=20)
    proof = audit_log.prove(ids[7])
    assert proof.leaf_index == 7 and proof.tree_size == 20
    proof.verify(keys.public_key, ids[7])
    again = InclusionProof.from_json(proof.to_json())
    again.verify(keys.public_key, ids[7])
    with pytest.raises(AuditIntegrityError, match="different event"):
        again.verify(keys.public_key, ids[8])
    assert b'"records_in":107' in again.leaf_input
    forged = dataclasses.replace(again, leaf_input=again.leaf_input.replace(b'"records_in":107', b'"records_in":7'))
    with pytest.raises(AuditIntegrityError, match="does not lead to the root"):
        forged.verify(keys.public_key, ids[7])
    with pytest.raises(AuditError, match="newer than tree head #0"):
        audit_log.prove(late[0])
    with pytest.raises(AuditError, match="no event"):
        audit_log.prove(new_event_id())


def test_heads_are_signed_every_n_events_and_when_the_last_is_too_old(migrated_engine: Engine, keys: Keys) -> None:
    now = [1_000.0]
    log = AuditLog(migrated_engine, signer=keys.signer, head_every_events=10, head_every_seconds=60, clock=lambda: now[0])
    log.record(gate_event(0))  # the first event anchors the log
    assert [h.tree_size for h in log.heads()] == [1]
    _fill(log, 8, start=1)
    assert [h.tree_size for h in log.heads()] == [1]
    _fill(log, 3, start=9)  # 12 events: 11 since the last head
    assert [h.tree_size for h in log.heads()] == [1, 12]
    log.record(gate_event(12))
    now[0] += 61
    log.record(gate_event(13))  # last head older than 60 s
    heads = log.heads()
    assert [h.tree_size for h in heads] == [1, 12, 14]
    assert [h.seq for h in heads] == [0, 1, 2]
    assert heads[-1].timestamp_ms == 1_061_000
    for head in heads:
        head.verify(keys.public_key)


def test_head_times_strictly_increase_even_if_the_clock_stands_still(migrated_engine: Engine, keys: Keys) -> None:
    log = AuditLog(migrated_engine, signer=keys.signer, head_every_events=0, head_every_seconds=0, clock=lambda: 5.0)
    _fill(log, 2)
    stamps = [log.sign_head().timestamp_ms for _ in range(3)]
    assert stamps == [5000, 5001, 5002]


def test_a_log_without_a_signing_key_appends_but_cannot_sign(migrated_engine: Engine) -> None:
    log = AuditLog(migrated_engine, signer=None)
    _fill(log, 3)
    assert log.heads() == []
    with pytest.raises(AuditError, match="no audit signing key loaded"):
        log.sign_head()


def test_the_signer_refuses_to_extend_a_head_the_stored_tree_no_longer_extends(audit_log: AuditLog, migrated_engine: Engine) -> None:
    _fill(audit_log, 9)
    audit_log.sign_head()
    with migrated_engine.begin() as conn:  # rewrite a stored node under the head
        conn.execute(sa.text("UPDATE audit_nodes SET hash = :h WHERE level = 3 AND idx = 0"), {"h": b"\x01" * 32})
    _fill(audit_log, 2, start=9)  # appending still works (no head due) ...
    with pytest.raises(AuditIntegrityError, match="does not extend head #0"):
        audit_log.sign_head()  # ... but no signature over a rewritten tree
    with migrated_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= 5"))
    with pytest.raises(AuditIntegrityError, match="events deleted"):
        audit_log.sign_head()


def test_open_refuses_an_unmigrated_database_and_an_unsafe_key(tmp_path: Path, keys: Keys) -> None:
    settings = Settings.build(
        database={"url": f"sqlite:///{tmp_path / 'fresh.db'}"},
        audit={"signing_key": keys.private_path, "public_key": keys.public_path},
    )
    with pytest.raises(StorageError, match="siloguard db upgrade"):
        AuditLog.open(settings)
    from siloguard.storage import create_engine, upgrade_database

    engine = create_engine(settings.database.url)
    upgrade_database(engine)
    engine.dispose()
    with AuditLog.open(settings) as log:
        assert log.signer is not None and log.signer.key_id == keys.signer.key_id
    keys.private_path.chmod(0o640)
    with pytest.raises(AuditError, match="readable by group or others"):
        AuditLog.open(settings)
    missing = settings.with_overrides(audit={"signing_key": tmp_path / "none.key"})
    with AuditLog.open(missing) as log:
        assert log.signer is None


def test_group_commit_sink_makes_every_recorded_event_durable(audit_log: AuditLog, keys: Keys) -> None:
    sink = GroupCommitSink(audit_log, max_batch=16)
    assert isinstance(sink, AuditSink)
    threads, per_thread = 6, 40
    start = threading.Barrier(threads)
    returned: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def producer(t: int) -> None:
        start.wait()
        out = []
        for i in range(per_thread):
            try:
                out.append(sink.record(gate_event(1000 * t + i)))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        returned[t] = out

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert audit_log.size() == threads * per_thread
    stored = {s.event.event_id: s.index for s in audit_log.iter_events()}
    for ids in returned.values():
        assert len(ids) == per_thread
        assert [stored[i] for i in ids] == sorted(stored[i] for i in ids)  # each thread's order kept
    assert 1 <= sink.commits <= threads * per_thread
    audit_log.sign_head()
    audit_log.verify(keys.public_key)


def test_group_commit_sink_returns_a_refusal_only_to_its_caller(audit_log: AuditLog) -> None:
    first = gate_event(0)
    audit_log.record(first)
    sink = GroupCommitSink(audit_log)
    with pytest.raises(AuditError, match="already in the audit log"):
        sink.record(dataclasses.replace(gate_event(1), event_id=first.event_id))
    assert sink.record(gate_event(2))
    assert audit_log.size() == 2
