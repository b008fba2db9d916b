"""Erasure leaves nothing behind: a store's keyed suppression list and its erasure journal.

* ``store_suppressions``: one row per (store, subject reference) of every customer the store
  erased. The reference is the store's keyed hash of the customer id
  (:meth:`siloguard.privacy.keys.SubjectVault.subject_ref`), never the id: without the store's
  master key it names nobody. Every silo preparation, silo load, consent import and access
  answer of the store skips these customers, so re-cutting or re-importing the same source
  does not bring an erased customer back.
* ``store_erasures``: what a store erased for each erasure task (counts, no subject), written
  before its receipt is posted, so a retry after a refused receipt reports the original
  counts instead of zero.
* ``dsr_tasks.claimed_until``: a store claims a task right before it erases (a lease); while
  the claim holds, the DPO cannot deny the request under the store's feet.

Revision ID: 0006_erasure
Revises: 0005_consent_order
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_erasure"
down_revision = "0005_consent_order"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("dsr_tasks") as batch:
        batch.add_column(sa.Column("claimed_until", _TS, nullable=True))
    op.create_table(
        "store_suppressions",
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=False),
        sa.Column("erased_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("store", "subject_ref", name="pk_store_suppressions"),
    )
    op.create_table(
        "store_erasures",
        sa.Column("task_id", sa.String(48), nullable=False),
        sa.Column("store", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("rows_erased", sa.Integer, nullable=False),
        sa.Column("embeddings_erased", sa.Integer, nullable=False),
        sa.Column("key_destroyed", sa.Boolean, nullable=False),
        sa.Column("erased_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_store_erasures"),
    )


def downgrade() -> None:
    with op.batch_alter_table("dsr_tasks") as batch:
        batch.drop_column("claimed_until")
    op.drop_table("store_erasures")
    op.drop_table("store_suppressions")
