"""Privacy-budget ledger: per-store accountant state and one row per round.

Revision ID: 0002_privacy_ledger
Revises: 0001_audit_log
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_privacy_ledger"
down_revision = "0001_audit_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_ledger",
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("accountant", sa.String(8), nullable=False),
        sa.Column("history", sa.Text, nullable=False),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("epsilon", sa.Float, nullable=False),
        sa.Column("epsilon_cap", sa.Float, nullable=False),
        sa.Column("rounds", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("store", name="pk_privacy_ledger"),
    )
    op.create_table(
        "privacy_ledger_rounds",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("server_round", sa.Integer, nullable=False),
        sa.Column("epsilon", sa.Float, nullable=False),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_privacy_ledger_rounds"),
    )
    op.create_index("ix_privacy_ledger_rounds_store", "privacy_ledger_rounds", ["store"])


def downgrade() -> None:
    op.drop_index("ix_privacy_ledger_rounds_store", table_name="privacy_ledger_rounds")
    op.drop_table("privacy_ledger_rounds")
    op.drop_table("privacy_ledger")
