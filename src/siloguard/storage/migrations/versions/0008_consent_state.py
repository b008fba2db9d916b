"""The consent registry's current state: the latest event per (purpose, subject).

``consent_state`` holds, for every (purpose key, subject) with any event, the largest order
key (``ord``, 0005_consent_order) among its events: even when the latest word is a grant.
:mod:`siloguard.policies.consent` writes it in the same transaction as each event and reads it
for "who consents now", so that question no longer scans the whole event history. The
events stay the source of truth: this migration fills the table from them, and the
``consent-state-rebuilds`` rule of ``siloguard check`` rebuilds it and compares.

Revision ID: 0008_consent_state
Revises: 0007_store_tasks
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_consent_state"
down_revision = "0007_store_tasks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_state",
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("ord", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("purpose", "subject", name="pk_consent_state"),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO consent_state (purpose, subject, ord) "
        "SELECT purpose, subject, max(ord) FROM consent_events GROUP BY purpose, subject"
    )
    op.create_index("ix_consent_state_subject", "consent_state", ["subject"])
    op.create_index("ix_consent_state_purpose_ord", "consent_state", ["purpose", "ord"])


def downgrade() -> None:
    op.drop_index("ix_consent_state_purpose_ord", table_name="consent_state")
    op.drop_index("ix_consent_state_subject", table_name="consent_state")
    op.drop_table("consent_state")
