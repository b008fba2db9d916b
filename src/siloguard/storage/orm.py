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
  ``subject`` is the store's pseudonym of the data subject, never a raw id. The source of truth.
- ``consent_state`` (``0008_consent_state``): the latest event's order key per (purpose,
  subject), written in the same transaction as the events; "who consents now" reads it
  instead of the history, and ``siloguard check`` rebuilds it from the events and compares.

Privacy API and data-subject requests (written only by :mod:`siloguard.api` and
:mod:`siloguard.dsr`; migration ``0004_api``):

- ``api_keys``: staff and service keys (role, store), only a SHA-256 of the secret;
- ``store_signing_keys``: each store's Ed25519 public key for erasure receipts;
- ``dsr_requests``: the request queue with its state and legal clock (``due_at`` is the
  current deadline); ``dsr_transitions``: every state change, with the id of its audit event;
- ``dsr_verifications`` (hashed one-time codes), ``dsr_outbox`` (the default notifier),
  ``dsr_sessions`` (hashed subject tokens), ``dsr_tasks`` (one erasure task per store, with
  the store's signed receipt; ``status`` pending | done | cancelled).

A store's erasure state (migration ``0006_erasure``; written only by the store's own
commands, :mod:`siloguard.privacy.suppression` and :mod:`siloguard.dsr.sync`):

- ``store_suppressions``: the store's keyed references of customers it erased (no raw id);
- ``store_erasures``: per erasure task, the counts the store erased (for its receipt).

A store's campaign experiments (migration ``0009_marketing``; written only by
:mod:`siloguard.clients.marketing`):

- ``campaigns``: one row per exported campaign list: target, as-of and send dates, the
  control share and seed of its held-out control group, the gate decision that released it;
- ``campaign_members``: who was in it (the store's pseudonym), in which arm and stratum.
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
    Boolean,
    ForeignKey,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AuditEventRow",
    "AuditHeadRow",
    "AuditNodeRow",
    "Base",
    "api_keys",
    "campaign_members",
    "campaigns",
    "consent_events",
    "consent_state",
    "dsr_outbox",
    "dsr_requests",
    "dsr_sessions",
    "dsr_tasks",
    "incidents",
    "dsr_transitions",
    "dsr_verifications",
    "privacy_ledger",
    "store_erasures",
    "store_signing_keys",
    "store_suppressions",
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
    # 2 x microseconds since the epoch of ``at`` + 1 unless a grant (0005_consent_order): the
    # largest ord among a purpose's keys decides, a withdrawal winning a tie.
    Column("ord", BigInteger, nullable=False),
    Index("ix_consent_events_purpose_subject_ord", "purpose", "subject", "ord"),
    Index("ix_consent_events_subject", "subject"),  # one subject's events (the API's consent reads)
)

consent_state = Table(
    "consent_state",
    Base.metadata,
    # One row per (purpose key, subject) that has any event: the largest ``ord`` among its
    # events (even = the latest word is a grant). Subjects are a store's keyed references and
    # each store keeps its own registry, so a row is per store, subject and purpose.
    Column("purpose", String(128), primary_key=True),
    Column("subject", String(64), primary_key=True),
    Column("ord", BigInteger, nullable=False),
    Index("ix_consent_state_subject", "subject"),  # erasure, one subject's lookups
    Index("ix_consent_state_purpose_ord", "purpose", "ord"),  # the latest event of a purpose key
    sqlite_with_rowid=False,  # clustered on (purpose, subject): a purpose's rows are one range
)

# ---- privacy API and data-subject requests (0004_api) -----------------------------------

api_keys = Table(
    "api_keys",
    Base.metadata,
    Column("id", String(16), primary_key=True),
    Column("role", String(32), nullable=False),
    Column("store", String(128), nullable=True),  # None = every store
    Column("label", String(64), nullable=True),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

store_signing_keys = Table(
    "store_signing_keys",
    Base.metadata,
    Column("store", String(128), primary_key=True),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

dsr_requests = Table(
    "dsr_requests",
    Base.metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("jurisdiction", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("ack_due_at", DateTime(timezone=True), nullable=True),
    # the last moment an extension may be announced (the original deadline); None: no extension
    Column("extension_notice_by", DateTime(timezone=True), nullable=True),
    Column("extended", Boolean, nullable=False),
    Column("subject_digest", String(64), nullable=False, index=True),
    Column("customer_ref", String(64), nullable=True),  # cleared once an erasure completes
    Column("contact", String(254), nullable=True),
    Column("idempotency_key", String(128), nullable=True),
    Column("gpc", Boolean, nullable=False),
    Column("payload", Text, nullable=False),  # JSON: consent changes of a consent request
    Column("result", Text, nullable=True),  # JSON: the answer once completed or denied
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("subject_digest", "idempotency_key"),
    Index("ix_dsr_requests_status_due_at", "status", "due_at"),
)

dsr_transitions = Table(
    "dsr_transitions",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(40), ForeignKey("dsr_requests.id"), nullable=False, index=True),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", String(128), nullable=True),
    Column("event_id", String(36), nullable=False, unique=True),  # its event in audit_events
)

dsr_verifications = Table(
    "dsr_verifications",
    Base.metadata,
    Column("request_id", String(40), ForeignKey("dsr_requests.id"), primary_key=True),
    Column("code_hash", LargeBinary(32), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
)

dsr_outbox = Table(
    "dsr_outbox",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(40), ForeignKey("dsr_requests.id"), nullable=False, index=True),
    Column("destination", String(254), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

dsr_sessions = Table(
    "dsr_sessions",
    Base.metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("subject_digest", String(64), nullable=False, index=True),
    Column("customer_ref", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

dsr_tasks = Table(
    "dsr_tasks",
    Base.metadata,
    Column("id", String(48), primary_key=True),
    Column("request_id", String(40), ForeignKey("dsr_requests.id"), nullable=False, index=True),
    Column("store", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # pending | claimed | done | cancelled (request ended)
    Column("customer_ref", String(64), nullable=True),  # cleared with the receipt
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("done_at", DateTime(timezone=True), nullable=True),
    Column("receipt", Text, nullable=True),  # canonical JSON the store signed
    Column("signature", LargeBinary(64), nullable=True),
    Column("receipt_event_id", String(36), nullable=True),  # its dsr.receipt event in audit_events
    Column("claimed_until", DateTime(timezone=True), nullable=True),  # a store is erasing (0006_erasure)
    # 0007_store_tasks: erasure | effects (consent events to record) | access (the store's answer)
    Column("kind", String(16), nullable=False, server_default="erasure"),
    Column("payload", Text, nullable=True),  # what the store is to do (JSON)
    Column("answer", Text, nullable=True),  # an access task's answer (ciphertext when sealed)
    UniqueConstraint("request_id", "store"),
    Index("ix_dsr_tasks_store_status", "store", "status"),
)

# ---- a store's erasure state (0006_erasure) ---------------------------------------------

store_suppressions = Table(
    "store_suppressions",
    Base.metadata,
    Column("store", String(128), primary_key=True),
    Column("subject_ref", String(64), primary_key=True),  # SubjectVault.subject_ref: keyed, no raw id
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

store_erasures = Table(
    "store_erasures",
    Base.metadata,
    Column("task_id", String(48), primary_key=True),
    Column("store", String(128), nullable=False),
    Column("request_id", String(40), nullable=False),
    Column("rows_erased", Integer, nullable=False),
    Column("embeddings_erased", Integer, nullable=False),
    Column("key_destroyed", Boolean, nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

# ---- a store's campaign experiments (0009_marketing) ------------------------------------

campaigns = Table(
    "campaigns",
    Base.metadata,
    Column("id", String(16), primary_key=True),  # "c" + 8 hex digits, shown to the store's staff
    Column("store", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),  # staff:<name>
    Column("target", String(160), nullable=False),  # segment:<name> or item:<stock code>
    Column("purpose", String(128), nullable=False),
    Column("as_of", String(10), nullable=False),  # the list was made from purchases before this day
    Column("send_date", String(10), nullable=False),  # outcomes are counted from this day on
    Column("control_share", Float, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("decision", String(40), nullable=False),  # the gate decision that released the list
    Column("model_version", String(32), nullable=True),
)

campaign_members = Table(
    "campaign_members",
    Base.metadata,
    Column("campaign_id", String(16), ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("subject", String(64), primary_key=True),  # the store's keyed pseudonym, never a raw id
    Column("arm", String(16), nullable=False),  # treatment | control
    Column("stratum", String(64), nullable=False),  # the RFM segment the split was stratified by
    Column("rank", Integer, nullable=False),
)

# 0010_incidents: the incident register (siloguard.compliance.incidents). No personal data: ids,
# counts, stores, times, and a summary refused if it looks like it names anyone.
incidents = Table(
    "incidents",
    Base.metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),  # confidentiality | integrity | availability
    Column("severity", String(8), nullable=False),  # low | medium | high
    Column("risk", String(8), nullable=False),  # unlikely | risk | high (to people's rights and freedoms)
    Column("aware_at", DateTime(timezone=True), nullable=False, index=True),  # the clocks run from here
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("stores", Text, nullable=False),  # JSON list
    Column("jurisdictions", Text, nullable=False),  # JSON list, from the stores' (run.json)
    Column("subjects", Integer, nullable=False),
    Column("records", Integer, nullable=False),
    Column("summary", Text, nullable=False),
    Column("authority_notified_at", DateTime(timezone=True), nullable=True),
    Column("subjects_notified_at", DateTime(timezone=True), nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("close_reason", String(64), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
