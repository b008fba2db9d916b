"""Privacy API: API keys, store receipt keys, data-subject requests and their erasure tasks.

Revision ID: 0004_api
Revises: 0003_consent
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_api"
down_revision = "0003_consent"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("store", sa.String(128), nullable=True),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_table(
        "store_signing_keys",
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("registered_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("store", name="pk_store_signing_keys"),
    )
    op.create_table(
        "dsr_requests",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("jurisdiction", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("ack_due_at", _TS, nullable=True),
        sa.Column("extension_notice_by", _TS, nullable=True),
        sa.Column("extended", sa.Boolean, nullable=False),
        sa.Column("subject_digest", sa.String(64), nullable=False),
        sa.Column("customer_ref", sa.String(64), nullable=True),
        sa.Column("contact", sa.String(254), nullable=True),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("gpc", sa.Boolean, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dsr_requests"),
        sa.UniqueConstraint("subject_digest", "idempotency_key", name="uq_dsr_requests_subject_digest_idempotency_key"),
    )
    op.create_index("ix_dsr_requests_subject_digest", "dsr_requests", ["subject_digest"])
    op.create_index("ix_dsr_requests_status_due_at", "dsr_requests", ["status", "due_at"])
    op.create_table(
        "dsr_transitions",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(128), nullable=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dsr_transitions"),
        sa.ForeignKeyConstraint(["request_id"], ["dsr_requests.id"], name="fk_dsr_transitions_request_id_dsr_requests"),
        sa.UniqueConstraint("event_id", name="uq_dsr_transitions_event_id"),
    )
    op.create_index("ix_dsr_transitions_request_id", "dsr_transitions", ["request_id"])
    op.create_table(
        "dsr_verifications",
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_dsr_verifications"),
        sa.ForeignKeyConstraint(["request_id"], ["dsr_requests.id"], name="fk_dsr_verifications_request_id_dsr_requests"),
    )
    op.create_table(
        "dsr_outbox",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("destination", sa.String(254), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dsr_outbox"),
        sa.ForeignKeyConstraint(["request_id"], ["dsr_requests.id"], name="fk_dsr_outbox_request_id_dsr_requests"),
    )
    op.create_index("ix_dsr_outbox_request_id", "dsr_outbox", ["request_id"])
    op.create_table(
        "dsr_sessions",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("subject_digest", sa.String(64), nullable=False),
        sa.Column("customer_ref", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_dsr_sessions"),
    )
    op.create_index("ix_dsr_sessions_subject_digest", "dsr_sessions", ["subject_digest"])
    op.create_table(
        "dsr_tasks",
        sa.Column("id", sa.String(48), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("customer_ref", sa.String(64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("done_at", _TS, nullable=True),
        sa.Column("receipt", sa.Text, nullable=True),
        sa.Column("signature", sa.LargeBinary(64), nullable=True),
        sa.Column("receipt_event_id", sa.String(36), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dsr_tasks"),
        sa.ForeignKeyConstraint(["request_id"], ["dsr_requests.id"], name="fk_dsr_tasks_request_id_dsr_requests"),
        sa.UniqueConstraint("request_id", "store", name="uq_dsr_tasks_request_id_store"),
    )
    op.create_index("ix_dsr_tasks_request_id", "dsr_tasks", ["request_id"])
    op.create_index("ix_dsr_tasks_store_status", "dsr_tasks", ["store", "status"])


def downgrade() -> None:
    for table in ("dsr_tasks", "dsr_sessions", "dsr_outbox", "dsr_verifications", "dsr_transitions", "dsr_requests",
                  "store_signing_keys", "api_keys"):
        op.drop_table(table)
