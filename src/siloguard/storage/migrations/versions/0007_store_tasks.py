"""Every effect of a data-subject request reaches the stores as a task, not only erasure.

* ``dsr_tasks.kind``: ``erasure`` (as before), ``effects`` (consent events the store records
  in its own registry: grants, withdrawals, opt-outs, a GPC signal) or ``access`` (the store
  answers from its own site, sealed to the subject's key when they gave one).
* ``dsr_tasks.payload``: what the store is to do (JSON: the events to record; for access, the
  subject's public key). No customer id beyond ``customer_ref``, cleared when the task ends.
* ``dsr_tasks.answer``: an access task's answer from the store (ciphertext when sealed),
  deleted with the request's answer (download, expiry, erasure).

Revision ID: 0007_store_tasks
Revises: 0006_erasure
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_store_tasks"
down_revision = "0006_erasure"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dsr_tasks") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="erasure"))
        batch.add_column(sa.Column("payload", sa.Text, nullable=True))
        batch.add_column(sa.Column("answer", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dsr_tasks") as batch:
        batch.drop_column("answer")
        batch.drop_column("payload")
        batch.drop_column("kind")
