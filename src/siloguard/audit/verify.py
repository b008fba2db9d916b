"""Verify a whole audit log: recompute it from the stored events, check every signed head.

:func:`verify_log` reads one consistent snapshot and checks, collecting every finding:

1. **events**: indices run 0, 1, 2, ... without gaps; each stored leaf hash is
   ``SHA-256(0x00 || body)``; each ``event_id`` column is the id inside its body. Events
   after the latest signed head, which no signature covers yet, must also parse as canonical
   events of the current schema.
2. **the tree**: every perfect node is recomputed from the leaf hashes and compared with the
   node store that proofs are served from (nothing missing, nothing extra, nothing different).
3. **heads**: numbered 0, 1, 2, ... without gaps; each signed by the trusted key over exactly
   its contents; sizes never shrink, times strictly increase; and each head's root equals the
   root recomputed from the first ``tree_size`` events. A changed, reordered, inserted or
   deleted event below a head's size changes that root.
4. **against** (a head the officer saved earlier): its signature is good, it is still in the
   log unchanged, the log still has at least its size, the recomputed root at its size equals
   its root, and the RFC 9162 consistency proof the log serves from it to the latest head
   verifies. This is what catches a truncated log whose later heads were deleted too.

A log with events but no signed head fails: nothing vouches for it. Any finding raises
:class:`~siloguard.errors.AuditIntegrityError` with all findings in ``problems``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING

from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from siloguard.audit._store import EVENTS as _E
from siloguard.audit._store import NODES as _N
from siloguard.audit._store import all_heads, lookup_nodes, scan
from siloguard.audit.events import AuditEvent
from siloguard.audit.heads import SignedTreeHead, key_id
from siloguard.audit.merkle import (
    EMPTY_ROOT,
    consistency_ranges,
    fold,
    perfect_nodes,
    resolve,
    verify_consistency,
)
from siloguard.errors import AuditError, AuditIntegrityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["VerifyReport", "verify_log"]

_MAX_PROBLEMS = 50


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a successful verification established."""

    tree_size: int
    root_hash: bytes
    heads_checked: int
    latest_head: SignedTreeHead | None
    uncovered: int  # events after the latest signed head
    against: SignedTreeHead | None


class _Findings:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append(message)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """``levels[l][i]`` = perfect node (l, i), computed from the leaf hashes."""
    levels = [leaves]
    sha = hashlib.sha256
    while len(levels[-1]) >= 2:
        row = levels[-1]
        levels.append([sha(b"\x01" + row[i] + row[i + 1]).digest() for i in range(0, len(row) - 1, 2)])
    return levels


def _root(levels: list[list[bytes]], size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return fold([levels[level][index] for level, index in perfect_nodes(0, size)])


def _report_gaps(seqs: Sequence[int], first: int, found: _Findings) -> None:
    expected = first
    for seq in seqs:
        if seq != expected:
            found.add(f"events {expected}..{seq - 1} are missing: deleted from the log" if seq > expected
                      else f"event index {seq} is out of order")
        expected = seq + 1


def _check_events(
    seqs: Sequence[int], ids: Sequence[str], stored: Sequence[bytes], bodies: Sequence[bytes], found: _Findings
) -> list[bytes]:
    """Leaf hashes of a batch; findings for stored hashes or id columns that disagree with the bytes."""
    if not isinstance(bodies[0], bytes):
        bodies = [bytes(b) for b in bodies]
        stored = [bytes(h) for h in stored]
    sha = hashlib.sha256
    leaves = [sha(b"\x00" + body).digest() for body in bodies]
    if leaves != list(stored):
        for seq, leaf, h in zip(seqs, leaves, stored):
            if leaf != h:
                found.add(f"event #{seq}: its stored leaf hash does not match its bytes")
    marks = list(map(str.encode, map('"event_id":"{}"'.format, ids)))  # values cannot hold a quote
    if not all(map(bytes.__contains__, bodies, marks)):
        for seq, mark, body in zip(seqs, marks, bodies):
            if mark not in body:
                found.add(f"event #{seq}: the event_id column differs from the id inside the event")
    return leaves


def _check_nodes(conn: Connection, levels: list[list[bytes]], found: _Findings) -> None:
    stats = {int(lv): (int(n), int(lo), int(hi)) for lv, n, lo, hi in conn.execute(
        text(f"SELECT level, count(*), min(idx), max(idx) FROM {_N.name} GROUP BY level"))}
    wanted = {lv: (len(levels[lv]), 0, len(levels[lv]) - 1) for lv in range(1, len(levels)) if levels[lv]}
    if stats == wanted:  # the right nodes are there: compare all hashes in one go
        got: list[bytes] = []
        for rows in scan(conn, f"SELECT hash FROM {_N.name} ORDER BY level, idx"):
            got.extend(map(bytes, map(itemgetter(0), rows)))
        if got == [h for lv in range(1, len(levels)) for h in levels[lv]]:
            return
    seen = [0] * len(levels)
    for rows in scan(conn, f"SELECT level, idx, hash FROM {_N.name} ORDER BY level, idx"):
        for level, idx, h in rows:
            if not 1 <= level < len(levels) or not 0 <= idx < len(levels[level]):
                found.add(f"node store holds node ({level}, {idx}), which the events do not make")
                continue
            seen[level] += 1
            if bytes(h) != levels[level][idx]:
                found.add(f"node store: node ({level}, {idx}) differs from the one the events make")
    for level in range(1, len(levels)):
        if seen[level] != len(levels[level]):
            found.add(f"node store lacks {len(levels[level]) - seen[level]} node(s) of level {level}")


def verify_log(conn: Connection, public_key: Ed25519PublicKey, *, against: SignedTreeHead | None = None) -> VerifyReport:
    """Verify the log reachable through ``conn`` (read inside one transaction); see the module doc."""
    found = _Findings()
    trusted = key_id(public_key)

    # 1. events -> leaf hashes, a batch at a time (most of the cost is here)
    count, low, high = conn.execute(text(f"SELECT count(*), min(seq), max(seq) FROM {_E.name}")).one()
    gapless = count == 0 or (low == 0 and high == count - 1)  # seq is the primary key: no duplicates
    leaves: list[bytes] = []
    columns = "event_id, leaf_hash, body" if gapless else "seq, event_id, leaf_hash, body"
    for rows in scan(conn, f"SELECT {columns} FROM {_E.name} ORDER BY seq"):
        first = len(leaves)
        if gapless:
            ids, stored, bodies = zip(*rows)
            seqs: Sequence[int] = range(first, first + len(rows))
        else:
            seqs, ids, stored, bodies = zip(*rows)
            _report_gaps(seqs, first, found)
        leaves.extend(_check_events(seqs, ids, stored, bodies, found))
    size = len(leaves)
    levels = _levels(leaves)

    # 2. node store: every perfect node the events make, nothing else, nothing different
    _check_nodes(conn, levels, found)

    # 3. heads
    heads = all_heads(conn)
    previous: SignedTreeHead | None = None
    for i, head in enumerate(heads):
        if head.seq != i:
            found.add(f"tree head #{i} is missing (next stored is #{head.seq}): heads deleted")
        try:
            if head.key_id != trusted:
                raise AuditIntegrityError(f"tree head #{head.seq} was signed by another key ({head.key_id[:16]}…)")
            head.verify(public_key)
        except AuditIntegrityError as exc:
            found.add(str(exc))
        if previous is not None:
            if head.tree_size < previous.tree_size:
                found.add(f"tree head #{head.seq} covers fewer events than #{previous.seq}: heads reordered or replaced")
            if head.timestamp_ms <= previous.timestamp_ms:
                found.add(f"tree head #{head.seq} is not later than #{previous.seq}: heads reordered or replaced")
        if head.tree_size > size:
            found.add(f"tree head #{head.seq} covers {head.tree_size} events but the log holds {size}: events deleted")
        elif _root(levels, head.tree_size) != head.root_hash:
            found.add(
                f"tree head #{head.seq}: the root of events 0..{head.tree_size - 1} differs from the signed root: "
                "events changed, reordered, inserted or deleted"
            )
        previous = head
    latest = heads[-1] if heads else None
    if latest is None and size:
        found.add(f"no signed tree head: nothing vouches for the {size} events; sign one with `siloguard audit head`")
    covered = latest.tree_size if latest is not None else 0

    # 1b. events no head covers yet must at least be well-formed
    if covered < size:
        tail = select(_E.c.seq, _E.c.body).where(_E.c.seq >= covered).order_by(_E.c.seq)
        for seq, body in conn.execute(tail):
            try:
                AuditEvent.from_canonical(bytes(body))
            except AuditError:
                found.add(f"event #{seq} (not yet under a signed head) is not a canonical audit event")

    # 4. the officer's saved head
    if against is not None:
        _check_against(conn, against, heads, levels, size, latest, public_key, found)

    if found.total:
        more = f" (first {len(found.items)} listed)" if found.total > len(found.items) else ""
        raise AuditIntegrityError(
            f"audit log failed verification: {found.total} problem(s){more}; first: {found.items[0]}",
            tuple(found.items),
        )
    return VerifyReport(size, _root(levels, size), len(heads), latest, size - covered, against)


def _check_against(
    conn: Connection,
    against: SignedTreeHead,
    heads: list[SignedTreeHead],
    levels: list[list[bytes]],
    size: int,
    latest: SignedTreeHead | None,
    public_key: Ed25519PublicKey,
    found: _Findings,
) -> None:
    try:
        against.verify(public_key)
    except AuditIntegrityError as exc:
        found.add(f"saved head: {exc}")
        return
    if against not in heads:
        found.add(f"saved tree head #{against.seq} (size {against.tree_size}) is no longer in the log: heads deleted or replaced")
    if against.tree_size > size:
        found.add(f"saved tree head #{against.seq} covers {against.tree_size} events but the log holds {size}: the log was truncated")
        return
    if _root(levels, against.tree_size) != against.root_hash:
        found.add(f"saved tree head #{against.seq}: the log's first {against.tree_size} events no longer have its root")
        return
    if latest is None or latest.tree_size <= against.tree_size or against.tree_size == 0:
        return
    try:  # from the node store the log serves proofs from
        proof = resolve(consistency_ranges(against.tree_size, latest.tree_size), lambda keys: lookup_nodes(conn, keys))
        verify_consistency(against.tree_size, latest.tree_size, against.root_hash, latest.root_hash, proof)
    except AuditIntegrityError as exc:
        found.add(f"consistency proof from saved head #{against.seq} to head #{latest.seq} fails: {exc}")
