"""Witnessed tree heads: a store's audit log, checked against the heads the coordinator saw.

Each store keeps its own audit log on its site and signs its own tree heads. With every
training reply it sends its latest signed head (and its public key); the coordinator checks
the signature, pins the store's key at first sight, refuses a head that is older or smaller
than one it witnessed before, and records the head in *its* audit log as an
``audit.head_witnessed`` event (the head's numbers, hash, key id and signature as integer
counts: audit events hold ids and counts only). From then on a store cannot quietly rewrite
its history: :func:`verify_witnessed` checks the store's log against every witnessed head,
i.e. that the first ``tree_size`` events of the log today still have the root the store
signed then (``siloguard audit verify --witnessed``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from siloguard.audit.events import AuditEvent
from siloguard.audit.heads import SignedTreeHead, key_id
from siloguard.audit.vocabulary import HEAD_REFUSED, HEAD_WITNESSED
from siloguard.errors import AuditError, AuditIntegrityError

__all__ = [
    "Witnessed",
    "head_from_counts",
    "head_to_counts",
    "public_key_from_text",
    "public_key_text",
    "verify_witnessed",
    "witness",
    "witnessed_heads",
]

_PART = 13  # hex digits per count: below 2**53, exact in every JSON reader


def _hex_counts(prefix: str, hexdigits: str) -> dict[str, int]:
    return {f"{prefix}{i // _PART + 1}": int(hexdigits[i : i + _PART], 16) for i in range(0, len(hexdigits), _PART)}


def _hex_from(prefix: str, counts: Mapping[str, int], length: int) -> str:
    parts = []
    for i in range(0, length, _PART):
        width = min(_PART, length - i)
        parts.append(f"{int(counts[f'{prefix}{i // _PART + 1}']):0{width}x}")
    return "".join(parts)


def head_to_counts(head: SignedTreeHead) -> dict[str, int]:
    """A signed head as audit counts (seq, size, time, and hash, key id and signature in parts)."""
    return {
        "seq": head.seq, "tree_size": head.tree_size, "timestamp_ms": head.timestamp_ms,
        **_hex_counts("root", head.root_hash.hex()), **_hex_counts("key", head.key_id),
        **_hex_counts("sig", head.signature.hex()),
    }


def head_from_counts(counts: Mapping[str, int]) -> SignedTreeHead:
    try:
        return SignedTreeHead(
            seq=int(counts["seq"]), tree_size=int(counts["tree_size"]), timestamp_ms=int(counts["timestamp_ms"]),
            root_hash=bytes.fromhex(_hex_from("root", counts, 64)), key_id=_hex_from("key", counts, 64),
            signature=bytes.fromhex(_hex_from("sig", counts, 128)),
        )
    except (KeyError, TypeError, ValueError):
        raise AuditIntegrityError("a witnessed head in the coordinator's log is incomplete") from None


def public_key_text(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return base64.b64encode(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise AuditError("the store's audit public key is not a base64 Ed25519 key") from None


@dataclass(frozen=True)
class Witnessed:
    """What the coordinator made of one store's head: recorded, or refused and why."""

    store: str
    head: SignedTreeHead
    accepted: bool
    reason: str


def witnessed_heads(events: Iterable[AuditEvent], store: str | None = None) -> dict[str, list[SignedTreeHead]]:
    """The heads the coordinator witnessed, per store, in the order it saw them."""
    out: dict[str, list[SignedTreeHead]] = {}
    for event in events:
        if event.action == HEAD_WITNESSED and event.store and (store is None or event.store == store):
            out.setdefault(event.store, []).append(head_from_counts(event.counts))
    return out


def witness(store: str, head_json: Mapping[str, object], public_key: str, earlier: list[SignedTreeHead],
            *, server_round: int | None = None) -> tuple[Witnessed, AuditEvent]:
    """Check a store's reported head against its key and the heads witnessed before; the event to record.

    Refused (``audit.head_refused``, decision deny): a bad signature, a key other than the
    one first witnessed for the store, or a head that goes back (lower seq or smaller tree).
    """
    head = SignedTreeHead.from_json(dict(head_json))
    key = public_key_from_text(public_key)
    reason = "witnessed"
    if key_id(key) != head.key_id:
        reason = "key-mismatch"
    else:
        try:
            head.verify(key)
        except AuditError:
            reason = "bad-signature"
    if reason == "witnessed" and earlier:
        last = earlier[-1]
        if head.key_id != earlier[0].key_id:
            reason = "key-changed"
        elif head.seq < last.seq or head.tree_size < last.tree_size or head.timestamp_ms < last.timestamp_ms:
            reason = "log-went-back"
        elif head.tree_size == last.tree_size and head.root_hash != last.root_hash:
            reason = "log-forked"  # the same size, another history
    accepted = reason == "witnessed"
    event = AuditEvent(
        actor="coordinator", action=HEAD_WITNESSED if accepted else HEAD_REFUSED, resource="audit:store-log",
        purpose="personalize.profiling", decision="info" if accepted else "deny", reason=reason,
        counts=head_to_counts(head), store=store, round=server_round,
    )
    return Witnessed(store, head, accepted, reason), event


def verify_witnessed(log: object, public_key: Ed25519PublicKey, heads: list[SignedTreeHead]) -> list[str]:
    """Check a store's log against every head the coordinator witnessed; returns one line per head.

    Raises :class:`AuditIntegrityError` on the first head the log no longer matches (its
    signature does not verify with the store's key, or the log's first ``tree_size`` events no
    longer have the witnessed root: history was rewritten).
    """
    lines = []
    for head in heads:
        if head.key_id != key_id(public_key):
            raise AuditIntegrityError(
                f"witnessed head #{head.seq} was signed with another key than the store's public key: "
                "pass the store's own audit public key"
            )
        head.verify(public_key)
        log.verify(public_key, against=head)  # type: ignore[attr-defined]
        lines.append(f"witnessed head #{head.seq} (size {head.tree_size}) matches")
    return lines
