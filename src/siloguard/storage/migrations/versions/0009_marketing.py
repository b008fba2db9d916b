"""A store's campaign experiments: the lists it exported and their held-out control groups.

* ``campaigns``: one row per exported campaign list (target, as-of and send dates, control
  share and seed, currency, the gate decision that released it, the model version used);
* ``campaign_members``: each member's pseudonym (the store's keyed pseudonym, never a raw
  id), arm (treatment or control), stratum (RFM segment) and rank.

Revision ID: 0009_marketing
Revises: 0008_consent_state
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_marketing"
down_revision = "0008_consent_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("target", sa.String(160), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("as_of", sa.String(10), nullable=False),
        sa.Column("send_date", sa.String(10), nullable=False),
        sa.Column("control_share", sa.Float, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("decision", sa.String(40), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
    )
    op.create_table(
        "campaign_members",
        sa.Column("campaign_id", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("stratum", sa.String(64), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], ondelete="CASCADE",
            name="fk_campaign_members_campaign_id_campaigns",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "subject", name="pk_campaign_members"),
    )


def downgrade() -> None:
    op.drop_table("campaign_members")
    op.drop_table("campaigns")
