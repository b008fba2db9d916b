"""1,000 random tamperings of a stored log, each of which `audit verify` must detect.

The attacker has the database, not the signing key. Each mutation runs inside a
transaction on a pristine signed log, is verified (with the officer's saved head, as
`siloguard audit verify --against` does) and rolled back. Many mutations are "tidy": after
changing events the attacker recomputes every leaf hash and the whole node store, so only
the signed heads can give the change away.

What is *not* a tampering the log can see: appending new events after the latest head
(anyone with the database can append; that is what the log is for) and changes by someone
holding the signing key. See SECURITY.md, "Audit trail".
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from siloguard.audit._store import NODES, insert_many
from siloguard.audit.events import AuditEvent, new_event_id
from siloguard.audit.heads import SignedTreeHead
from siloguard.audit.log import AuditLog
from siloguard.audit.merkle import MerkleTree, leaf_hash
from siloguard.audit.verify import verify_log
from siloguard.errors import AuditIntegrityError
from tests.audit.helpers import Keys, gate_event, make_keys
from tests.storage.databases import BACKENDS, fresh_database

MUTATIONS = 1000
SEED = 9162
HEAD_SIZES = (8, 20, 33, 50, 64)


@dataclass
class Ctx:
    rng: random.Random
    n: int
    heads: list[SignedTreeHead]
    attacker: Keys
    trusted_key_id: str


def _flip(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def _row(conn: Connection, seq: int) -> Any:
    return conn.execute(sa.text("SELECT seq, event_id, leaf_hash, body FROM audit_events WHERE seq = :s"), {"s": seq}).one()


def _set_event(conn: Connection, seq: int, **values: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    conn.execute(sa.text(f"UPDATE audit_events SET {sets} WHERE seq = :seq"), {**values, "seq": seq})


def _rebuild_nodes(conn: Connection) -> None:
    """The tidy attacker: the node store made consistent with the (changed) events."""
    leaves = [bytes(r[0]) for r in conn.execute(sa.text("SELECT leaf_hash FROM audit_events ORDER BY seq"))]
    tree = MerkleTree(leaves)
    conn.execute(sa.text("DELETE FROM audit_nodes"))
    rows = [(lvl, idx, h) for lvl, row in enumerate(tree.levels) if lvl > 0 for idx, h in enumerate(row)]
    if rows:
        insert_many(conn, NODES, ("level", "idx", "hash"), rows)


def _shift(conn: Connection, first: int, delta: int) -> None:
    """Renumber events with seq >= first by delta (through negative values: no key clash)."""
    conn.execute(sa.text("UPDATE audit_events SET seq = -seq - 1 WHERE seq >= :f"), {"f": first})
    conn.execute(sa.text("UPDATE audit_events SET seq = -seq - 1 + :d WHERE seq < 0"), {"d": delta})


def _forged_event(original: AuditEvent) -> AuditEvent:
    """A valid event that differs in what matters: the decision and its counts."""
    return dataclasses.replace(
        original,
        decision="allow" if original.decision == "deny" else "deny",
        counts={**original.counts, "records_kept": original.counts.get("records_kept", 0) + 1},
    )


# ---- the mutations ---------------------------------------------------------------------


def flip_event_byte(conn: Connection, c: Ctx) -> None:
    seq = c.rng.randrange(c.n)
    _set_event(conn, seq, body=_flip(bytes(_row(conn, seq).body), c.rng))


def flip_event_byte_tidy(conn: Connection, c: Ctx) -> None:
    seq = c.rng.randrange(c.n)
    body = _flip(bytes(_row(conn, seq).body), c.rng)
    _set_event(conn, seq, body=body, leaf_hash=leaf_hash(body))
    _rebuild_nodes(conn)


def rewrite_event_tidy(conn: Connection, c: Ctx) -> None:
    seq = c.rng.randrange(c.n)
    body = _forged_event(AuditEvent.from_canonical(bytes(_row(conn, seq).body))).canonical()
    _set_event(conn, seq, body=body, leaf_hash=leaf_hash(body))
    _rebuild_nodes(conn)


def flip_leaf_hash(conn: Connection, c: Ctx) -> None:
    seq = c.rng.randrange(c.n)
    _set_event(conn, seq, leaf_hash=_flip(bytes(_row(conn, seq).leaf_hash), c.rng))


def change_event_id_column(conn: Connection, c: Ctx) -> None:
    _set_event(conn, c.rng.randrange(c.n), event_id=new_event_id())


def delete_event(conn: Connection, c: Ctx) -> None:
    conn.execute(sa.text("DELETE FROM audit_events WHERE seq = :s"), {"s": c.rng.randrange(c.n)})


def delete_event_tidy(conn: Connection, c: Ctx) -> None:
    seq = c.rng.randrange(c.n)
    conn.execute(sa.text("DELETE FROM audit_events WHERE seq = :s"), {"s": seq})
    _shift(conn, seq + 1, -1)
    _rebuild_nodes(conn)


def reorder_events_tidy(conn: Connection, c: Ctx) -> None:
    a, b = c.rng.sample(range(c.n), 2)
    ra, rb = _row(conn, a), _row(conn, b)
    _set_event(conn, a, event_id="swap-in-progress")
    _set_event(conn, b, event_id=ra.event_id, leaf_hash=ra.leaf_hash, body=ra.body)
    _set_event(conn, a, event_id=rb.event_id, leaf_hash=rb.leaf_hash, body=rb.body)
    _rebuild_nodes(conn)


def insert_event_tidy(conn: Connection, c: Ctx) -> None:
    seq = c.rng.randrange(c.n)  # anywhere under the heads; appending after them is not tampering
    forged = gate_event(10_000 + c.rng.randrange(10_000), rng=c.rng)
    _shift(conn, seq, +1)
    body = forged.canonical()
    conn.execute(
        sa.text("INSERT INTO audit_events (seq, event_id, leaf_hash, body) VALUES (:s, :e, :h, :b)"),
        {"s": seq, "e": forged.event_id, "h": leaf_hash(body), "b": body},
    )
    _rebuild_nodes(conn)


def truncate_events(conn: Connection, c: Ctx) -> None:
    conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= :s"), {"s": c.n - c.rng.randint(1, c.n)})
    _rebuild_nodes(conn)


def truncate_events_and_heads(conn: Connection, c: Ctx) -> None:
    keep = c.n - c.rng.randint(1, c.n)
    conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= :s"), {"s": keep})
    conn.execute(sa.text("DELETE FROM audit_heads WHERE tree_size > :s"), {"s": keep})
    _rebuild_nodes(conn)


def _set_head(conn: Connection, seq: int, **values: Any) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    conn.execute(sa.text(f"UPDATE audit_heads SET {sets} WHERE seq = :seq"), {**values, "seq": seq})


def change_head_field(conn: Connection, c: Ctx) -> None:
    head = c.rng.choice(c.heads)
    field = c.rng.choice(["root_hash", "signature", "tree_size", "timestamp_ms", "key_id"])
    if field in ("root_hash", "signature"):
        _set_head(conn, head.seq, **{field: _flip(getattr(head, field), c.rng)})
    elif field == "tree_size":
        _set_head(conn, head.seq, tree_size=head.tree_size + c.rng.choice([-1, 1]))
    elif field == "timestamp_ms":
        _set_head(conn, head.seq, timestamp_ms=head.timestamp_ms + c.rng.choice([-1, 1, 60_000]))
    else:
        _set_head(conn, head.seq, key_id=c.attacker.signer.key_id)


def forge_head(conn: Connection, c: Ctx) -> None:
    """A head for a rewritten log, signed with the attacker's key (claiming ours or not)."""
    rewrite_event_tidy(conn, c)
    head = c.rng.choice(c.heads)
    leaves = [bytes(r[0]) for r in conn.execute(sa.text("SELECT leaf_hash FROM audit_events ORDER BY seq"))]
    forged = c.attacker.signer.sign(
        seq=head.seq, tree_size=head.tree_size, root_hash=MerkleTree(leaves).root(head.tree_size), timestamp_ms=head.timestamp_ms
    )
    claim = c.trusted_key_id if c.rng.random() < 0.5 else forged.key_id
    _set_head(conn, head.seq, root_hash=forged.root_hash, signature=forged.signature, key_id=claim)


def swap_heads(conn: Connection, c: Ctx) -> None:
    a, b = c.rng.sample(c.heads, 2)
    for target, source in ((a, b), (b, a)):
        _set_head(conn, target.seq, tree_size=source.tree_size, root_hash=source.root_hash,
                  timestamp_ms=source.timestamp_ms, signature=source.signature)


def replace_head_with_another(conn: Connection, c: Ctx) -> None:
    a, b = c.rng.sample(c.heads, 2)
    _set_head(conn, a.seq, tree_size=b.tree_size, root_hash=b.root_hash, timestamp_ms=b.timestamp_ms, signature=b.signature)


def delete_head(conn: Connection, c: Ctx) -> None:
    conn.execute(sa.text("DELETE FROM audit_heads WHERE seq = :s"), {"s": c.rng.choice(c.heads).seq})


def flip_node(conn: Connection, c: Ctx) -> None:
    level, idx, h = c.rng.choice(list(conn.execute(sa.text("SELECT level, idx, hash FROM audit_nodes"))))
    conn.execute(sa.text("UPDATE audit_nodes SET hash = :h WHERE level = :l AND idx = :i"),
                 {"h": _flip(bytes(h), c.rng), "l": level, "i": idx})


KINDS: list[Callable[[Connection, Ctx], None]] = [
    flip_event_byte, flip_event_byte_tidy, rewrite_event_tidy, flip_leaf_hash, change_event_id_column,
    delete_event, delete_event_tidy, reorder_events_tidy, insert_event_tidy, truncate_events,
    truncate_events_and_heads, change_head_field, forge_head, swap_heads, replace_head_with_another,
    delete_head, flip_node,
]


def _pristine_log(engine: Engine, keys: Keys) -> list[SignedTreeHead]:
    log = AuditLog(engine, signer=keys.signer, head_every_events=0, head_every_seconds=0)
    done = 0
    for size in HEAD_SIZES:
        log.append([gate_event(i) for i in range(done, size)])
        done = size
        log.sign_head()
    return log.heads()


def _run(engine: Engine, keys: Keys, tmp_path: Path, mutations: int) -> Counter[str]:
    heads = _pristine_log(engine, keys)
    saved = heads[-1]  # the head the officer keeps outside the database
    ctx = Ctx(random.Random(SEED), HEAD_SIZES[-1], heads, make_keys(tmp_path, "attacker"), keys.signer.key_id)
    detected: Counter[str] = Counter()
    missed: list[str] = []
    with engine.connect() as conn:
        with conn.begin():
            verify_log(conn, keys.public_key, against=saved)  # the untouched log passes
        for i in range(mutations):
            kind = KINDS[i % len(KINDS)] if i < len(KINDS) else ctx.rng.choice(KINDS)
            trans = conn.begin()
            try:
                kind(conn, ctx)
                try:
                    verify_log(conn, keys.public_key, against=saved)
                    missed.append(f"#{i} {kind.__name__}")
                except AuditIntegrityError:
                    detected[kind.__name__] += 1
            finally:
                trans.rollback()
        with conn.begin():
            verify_log(conn, keys.public_key, against=saved)  # every change was rolled back
    assert missed == [], f"undetected tamperings (seed {SEED}): {missed[:10]}"
    return detected


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_one_of_1000_random_tamperings_is_detected(tmp_path: Path, keys: Keys, backend: str) -> None:
    from siloguard.storage import create_engine, upgrade_database

    with fresh_database(backend, tmp_path) as url:
        engine = create_engine(url)
        upgrade_database(engine)
        try:
            detected = _run(engine, keys, tmp_path, MUTATIONS)
        finally:
            engine.dispose()
    assert sum(detected.values()) == MUTATIONS
    assert set(detected) == {k.__name__ for k in KINDS}  # every kind was tried, and caught
    print(f"\n{backend}: detected {sum(detected.values())}/{MUTATIONS} tamperings:", dict(sorted(detected.items())))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_each_kind_of_tampering_changes_the_stored_log(tmp_path: Path, keys: Keys, kind: Callable[[Connection, Ctx], None]) -> None:
    """Guards the test above: a "mutation" that changed nothing would be detected by nothing."""
    from siloguard.storage import create_engine, upgrade_database

    engine = create_engine(f"sqlite:///{tmp_path / 'kinds.db'}")
    upgrade_database(engine)
    heads = _pristine_log(engine, keys)
    ctx = Ctx(random.Random(SEED), HEAD_SIZES[-1], heads, make_keys(tmp_path, "attacker"), keys.signer.key_id)
    dump = "SELECT * FROM audit_events ORDER BY seq", "SELECT * FROM audit_heads ORDER BY seq", "SELECT * FROM audit_nodes ORDER BY level, idx"
    try:
        with engine.connect() as conn, conn.begin():
            before = [list(conn.execute(sa.text(q))) for q in dump]
            kind(conn, ctx)
            after = [list(conn.execute(sa.text(q))) for q in dump]
            assert before != after
    finally:
        engine.dispose()
