"""Consent registry: append-only consent events per (subject, purpose).

Revision ID: 0003_consent
Revises: 0002_privacy_ledger
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_consent"
down_revision = "0002_privacy_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_events",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("notice_version", sa.String(32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consent_events"),
    )
    op.create_index("ix_consent_events_purpose_subject", "consent_events", ["purpose", "subject"])


def downgrade() -> None:
    op.drop_index("ix_consent_events_purpose_subject", table_name="consent_events")
    op.drop_table("consent_events")
