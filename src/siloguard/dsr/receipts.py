"""Erasure receipts: what a store erased for one task, signed with the store's Ed25519 key.

A store's receipt key is derived from its master key (HKDF label ``dsr-receipt``,
:meth:`siloguard.privacy.keys.StoreKeys.derived`), so it needs no extra file and is as well
kept as the store's other keys. Its public half is registered with the API
(``store_signing_keys``, by ``siloguard keys create --role store_operator --store S`` or
:func:`register_store_key`); the API accepts a receipt only if it verifies against that key.

The signed bytes are canonical JSON (sorted keys, no whitespace) of the receipt fields; they
hold task and request ids and counts, never a customer id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.engine import Engine

from siloguard.dsr.errors import DsrInvalid
from siloguard.privacy.keys import StoreKeys
from siloguard.storage.orm import store_signing_keys

__all__ = ["Receipt", "public_key_bytes", "register_store_key", "sign_receipt", "signing_key", "verify_receipt"]

RECEIPT_VERSION = 1
_LABEL = "dsr-receipt"


@dataclass(frozen=True)
class Receipt:
    """A store's statement that it erased a subject for one task."""

    task: str
    request: str
    store: str
    rows_erased: int
    rows_remaining: int
    embeddings_erased: int
    key_destroyed: bool
    erased_at: str
    version: int = RECEIPT_VERSION

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, text: str) -> Receipt:
        try:
            data = json.loads(text)
            receipt = cls(**data)
        except (ValueError, TypeError):
            raise DsrInvalid("the receipt is not a receipt JSON object with exactly the receipt fields") from None
        if receipt.canonical() != text.encode():
            raise DsrInvalid("the receipt is not in canonical form (sorted keys, no whitespace)")
        return receipt


def signing_key(store_keys: StoreKeys) -> Ed25519PrivateKey:
    """The store's receipt signing key (derived, never stored on its own)."""
    return Ed25519PrivateKey.from_private_bytes(store_keys.derived(_LABEL).reveal())


def public_key_bytes(store_keys: StoreKeys) -> bytes:
    return signing_key(store_keys).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_receipt(store_keys: StoreKeys, receipt: Receipt) -> bytes:
    return signing_key(store_keys).sign(receipt.canonical())


def register_store_key(engine: Engine, store: str, public_key: bytes, *, replace: bool = False) -> None:
    """Register (or, with ``replace``, rotate) a store's receipt public key."""
    if len(public_key) != 32:
        raise DsrInvalid("a store receipt key is a raw 32-byte Ed25519 public key")
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        held = conn.execute(sa.select(store_signing_keys.c.public_key).where(store_signing_keys.c.store == store)).scalar()
        if held is None:
            conn.execute(store_signing_keys.insert().values(store=store, public_key=public_key, registered_at=now))
        elif bytes(held) != public_key:
            if not replace:
                raise DsrInvalid(
                    f"store {store!r} has another receipt key registered: check that keys.root is the store's own key "
                    "directory; if the store's keys really changed, pass --rotate-receipt-key"
                )
            conn.execute(
                store_signing_keys.update()
                .where(store_signing_keys.c.store == store)
                .values(public_key=public_key, registered_at=now)
            )


def verify_receipt(public_key: bytes, receipt_text: str, signature: bytes) -> Receipt:
    """The parsed receipt if ``signature`` is the store's over exactly ``receipt_text``."""
    receipt = Receipt.parse(receipt_text)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, receipt_text.encode())
    except (InvalidSignature, ValueError):
        raise DsrInvalid("the receipt signature does not verify against the store's registered key") from None
    return receipt


def receipt_summary(receipt: Receipt) -> dict[str, Any]:
    """What the completion response shows of one receipt."""
    return {
        "store": receipt.store,
        "rows_erased": receipt.rows_erased,
        "rows_remaining": receipt.rows_remaining,
        "embeddings_erased": receipt.embeddings_erased,
        "key_destroyed": receipt.key_destroyed,
        "erased_at": receipt.erased_at,
    }
