"""SQLAlchemy 2 tables. One ``MetaData`` for every table siloguard stores; Alembic
migrations (``storage/migrations``) create them, and a test checks they agree.

Audit log tables (written only by :mod:`siloguard.audit.log`):

- ``audit_events``: one row per event; ``seq`` is its leaf index in the Merkle tree
  (0, 1, 2, ... with no gaps), ``body`` the canonical JSON that was hashed, ``leaf_hash``
  ``SHA-256(0x00 || body)``. ``event_id`` is unique.
- ``audit_nodes``: every complete perfect node of level >= 1 (``level``, ``idx`` cover
  leaves ``[idx * 2**level, (idx + 1) * 2**level)``); a cache that makes proofs cheap.
  The verifier recomputes it from the events and reports any difference.
- ``audit_heads``: signed tree heads, numbered 0, 1, 2, ... (``seq`` is signed too).

Privacy-budget ledger tables (written only by :mod:`siloguard.privacy.budget`):

- ``privacy_ledger``: one row per store: accountant, its composed history (JSON), delta,
  epsilon, cap, rounds trained;
- ``privacy_ledger_rounds``: one row per store and round, for reports and plots.

Consent registry (written only by :mod:`siloguard.policies.consent`):

- ``consent_events``: append-only grant / withdraw / opt-out events per (subject, purpose);
  ``subject`` is the store's pseudonym of the data subject, never a raw id.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Index,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEventRow",
    "AuditHeadRow",
    "AuditNodeRow",
    "Base",
    "consent_events",
    "privacy_ledger",
    "privacy_ledger_rounds",
]

# SQLite makes only "INTEGER PRIMARY KEY" an alias of its (64-bit) rowid.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AuditEventRow(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(_Seq, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)


class AuditNodeRow(Base):
    __tablename__ = "audit_nodes"
    __table_args__ = {"sqlite_with_rowid": False}

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditHeadRow(Base):
    __tablename__ = "audit_heads"

    seq: Mapped[int] = mapped_column(_Seq, primary_key=True, autoincrement=False)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


privacy_ledger = Table(
    "privacy_ledger",
    Base.metadata,
    Column("store", String(128), primary_key=True),
    Column("accountant", String(8), nullable=False),
    Column("history", Text, nullable=False),  # JSON [[noise, rate, steps], ...]
    Column("delta", Float, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("epsilon_cap", Float, nullable=False),
    Column("rounds", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

privacy_ledger_rounds = Table(
    "privacy_ledger_rounds",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("store", String(128), nullable=False, index=True),
    Column("server_round", Integer, nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

consent_events = Table(
    "consent_events",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subject", String(64), nullable=False),
    Column("purpose", String(128), nullable=False),
    Column("kind", String(16), nullable=False),  # grant | withdraw | opt_out
    Column("source", String(16), nullable=False),  # web | store | api | gpc
    Column("notice_version", String(32), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_consent_events_purpose_subject", "purpose", "subject"),
)
