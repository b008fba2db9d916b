"""API keys for staff and services: created once, shown once, stored as a hash, revocable.

A key reads ``sgk_<id>_<secret>``: the id (12 lower-case letters, so it is safe in audit
events and Casbin principal ids) finds the row, and the SHA-256 of the 256-bit random secret
is compared in constant time. A fast hash is enough here: the secret is random, so there is
no dictionary an attacker holding the table could try (passwords would need a slow KDF).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.errors import ConfigError
from siloguard.storage.db import reads
from siloguard.storage.orm import api_keys

__all__ = ["KEY_ROLES", "ApiKey", "authenticate_key", "create_key", "list_keys", "revoke_key"]

#: Roles a key can hold (data subjects use one-time codes, never keys).
KEY_ROLES: tuple[str, ...] = ("store_operator", "store_trainer", "compliance_officer", "dpo", "api_service")
_KEY = re.compile(r"sgk_([a-z]{12})_([A-Za-z0-9_-]{43})")
_STORE = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: str
    store: str | None
    label: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def principal(self) -> str:
        return f"key:{self.id}"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _row(row: sa.RowMapping) -> ApiKey:
    return ApiKey(row["id"], row["role"], row["store"], row["label"], row["created_at"], row["revoked_at"])


def create_key(engine: Engine, role: str, *, store: str | None = None, label: str | None = None) -> tuple[ApiKey, str]:
    """A new key: (its record, the key text, to be shown once and never again)."""
    if role not in KEY_ROLES:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(KEY_ROLES)}")
    if role in ("store_operator", "store_trainer") and store is None:
        raise ConfigError(f"a {role} key belongs to one store: pass --store STORE")
    if store is not None and not _STORE.fullmatch(store):
        raise ConfigError(f"invalid store id {store!r}: use lower-case letters, digits, - and _")
    if label is not None and len(label) > 64:
        raise ConfigError("a key label is at most 64 characters")
    key_id = "".join(secrets.choice(string.ascii_lowercase) for _ in range(12))
    secret = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            api_keys.insert().values(
                id=key_id, role=role, store=store, label=label, secret_hash=_hash(secret), created_at=now, revoked_at=None
            )
        )
    return ApiKey(key_id, role, store, label, now, None), f"sgk_{key_id}_{secret}"


def list_keys(engine: Engine) -> list[ApiKey]:
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).mappings()]


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke a key at once; False if no such active key."""
    with engine.begin() as conn:
        done = conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(timezone.utc))
        ).rowcount
    return bool(done)


#: Built once: every call with a key runs it (see ``dsr.effects._ASKED``).
_BY_ID = sa.select(api_keys).where(api_keys.c.id == sa.bindparam("key_id"))


def authenticate_key(engine: Engine, text: str) -> ApiKey | None:
    """The active key ``text`` is, or None (malformed, unknown, wrong secret or revoked)."""
    match = _KEY.fullmatch(text)
    if match is None:
        return None
    key_id, secret = match.groups()
    with reads(engine).connect() as conn:
        row = conn.execute(_BY_ID, {"key_id": key_id}).mappings().first()
    if row is None:
        hmac.compare_digest(_hash(secret), bytes(32))  # same work whether or not the id exists
        return None
    if not hmac.compare_digest(bytes(row["secret_hash"]), _hash(secret)) or row["revoked_at"] is not None:
        return None
    return _row(row)
