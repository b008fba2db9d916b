"""Consent events get an order key, so the live-consent set is one streaming scan per purpose,
and an index by subject, so one subject's consent (the privacy API) is a lookup, not a scan.

``ord`` = microseconds since the Unix epoch of ``at``, times two, plus one for a withdrawal or
opt-out (0 for a grant): the largest ``ord`` of a subject among a purpose's keys is the event
that decides, and a withdrawal wins a tie with a grant at the same time. The index
(purpose, subject, ord) lets "latest per subject" stream without a sort.

Revision ID: 0005_consent_order
Revises: 0004_api
Create Date: 2026-11-22
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005_consent_order"
down_revision = "0004_api"
branch_labels = None
depends_on = None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ord(at: datetime, kind: str) -> int:
    if at.tzinfo is None:  # SQLite returns naive times; they were stored in UTC
        at = at.replace(tzinfo=UTC)
    delta = at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros * 2 + (0 if kind == "grant" else 1)


def upgrade() -> None:
    with op.batch_alter_table("consent_events") as batch:
        batch.add_column(sa.Column("ord", sa.BigInteger, nullable=True))
    conn = op.get_bind()
    events = sa.table("consent_events", sa.column("id"), sa.column("kind"), sa.column("at", sa.DateTime(timezone=True)), sa.column("ord"))
    rows = conn.execute(sa.select(events.c.id, events.c.kind, events.c.at)).all()
    for start in range(0, len(rows), 10_000):
        conn.execute(
            events.update().where(events.c.id == sa.bindparam("b_id")).values(ord=sa.bindparam("b_ord")),
            [{"b_id": r.id, "b_ord": _ord(r.at, r.kind)} for r in rows[start : start + 10_000]],
        )
    with op.batch_alter_table("consent_events") as batch:
        batch.alter_column("ord", existing_type=sa.BigInteger, nullable=False)
        batch.drop_index("ix_consent_events_purpose_subject")
        batch.create_index("ix_consent_events_purpose_subject_ord", ["purpose", "subject", "ord"])
        batch.create_index("ix_consent_events_subject", ["subject"])


def downgrade() -> None:
    with op.batch_alter_table("consent_events") as batch:
        batch.drop_index("ix_consent_events_subject")
        batch.drop_index("ix_consent_events_purpose_subject_ord")
        batch.create_index("ix_consent_events_purpose_subject", ["purpose", "subject"])
        batch.drop_column("ord")
