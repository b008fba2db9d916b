"""Events and keys for audit tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from siloguard.audit.events import AuditEvent
from siloguard.audit.heads import HeadSigner, generate_keypair, load_public_key, load_signing_key

STORES = ("france", "germany", "united-kingdom-1", "international")
PURPOSES = ("recommendation", "analytics")
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def gate_event(i: int, *, rng: random.Random | None = None) -> AuditEvent:
    """A plausible gate decision: ids and counts only."""
    rng = rng or random.Random(i)
    store = STORES[i % len(STORES)]
    deny = rng.random() < 0.2
    return AuditEvent(
        actor=f"store:{store}",
        action="gate.train",
        resource=f"silo:{store}/transactions",
        purpose=PURPOSES[i % len(PURPOSES)],
        decision="deny" if deny else "allow",
        reason="consent-missing" if deny else "policy-allow",
        counts={"records_in": 100 + i, "records_kept": 0 if deny else 90 + i % 10},
        round=i % 5,
        store=store,
        time=START + timedelta(hours=i),
    )


@dataclass(frozen=True)
class Keys:
    signer: HeadSigner
    public_key: Ed25519PublicKey
    private_path: Path
    public_path: Path


def make_keys(directory: Path, name: str = "audit") -> Keys:
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    generate_keypair(private_path, public_path)
    return Keys(load_signing_key(private_path), load_public_key(public_path), private_path, public_path)
