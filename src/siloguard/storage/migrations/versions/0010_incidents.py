"""The incident register: personal-data breaches and their notification clocks.

One row per incident (``siloguard incident open``): kind, severity, risk, when the organisation
became aware (the clocks of GDPR Art. 33/34 and Cal. Civ. Code 1798.82 run from it), the
affected stores and their jurisdictions, counts of people and records, a summary that names
no one, and when the authority and the people were told. Every change is also an audit event.

Revision ID: 0010_incidents
Revises: 0009_marketing
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_incidents"
down_revision = "0009_marketing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("risk", sa.String(8), nullable=False),
        sa.Column("aware_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stores", sa.Text, nullable=False),
        sa.Column("jurisdictions", sa.Text, nullable=False),
        sa.Column("subjects", sa.Integer, nullable=False),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("authority_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("subjects_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_incidents_aware_at", "incidents", ["aware_at"])


def downgrade() -> None:
    op.drop_index("ix_incidents_aware_at", table_name="incidents")
    op.drop_table("incidents")
