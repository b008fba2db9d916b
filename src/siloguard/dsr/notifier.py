"""How one-time codes reach a data subject: a pluggable :class:`Notifier`.

The default, :class:`OutboxNotifier`, writes the message to the ``dsr_outbox`` table in the
same transaction that creates the code, so a code exists only if its message does; the
operator's mailer (or the operator, by hand) reads and delivers the rows with
:func:`read_outbox`. Delivered or expired rows are removed with :func:`purge_outbox`. The
outbox holds the code in clear because delivering it is its only job; nothing else does
(the request stores a keyed hash of it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from siloguard.storage.orm import dsr_outbox

__all__ = ["Notifier", "OutboxNotifier", "purge_outbox", "read_outbox"]


@runtime_checkable
class Notifier(Protocol):
    """Delivers a message to a subject; ``conn`` is the transaction creating the code."""

    def send(self, conn: Connection, *, request_id: str, destination: str, body: str, now: datetime, expires_at: datetime) -> None: ...


class OutboxNotifier:
    """Queues messages in ``dsr_outbox`` for the operator to deliver."""

    def send(self, conn: Connection, *, request_id: str, destination: str, body: str, now: datetime, expires_at: datetime) -> None:
        conn.execute(
            dsr_outbox.insert(),
            {"request_id": request_id, "destination": destination, "body": body, "created_at": now, "expires_at": expires_at},
        )


def read_outbox(engine: Engine, request_id: str | None = None) -> list[dict[str, Any]]:
    """Queued messages, oldest first (optionally of one request)."""
    query = sa.select(dsr_outbox).order_by(dsr_outbox.c.id)
    if request_id is not None:
        query = query.where(dsr_outbox.c.request_id == request_id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def purge_outbox(engine: Engine, *, ids: list[int] | None = None, expired_before: datetime | None = None) -> int:
    """Delete delivered messages (``ids``) and those expired before a time; returns the count."""
    conds = []
    if ids:
        conds.append(dsr_outbox.c.id.in_(ids))
    if expired_before is not None:
        conds.append(dsr_outbox.c.expires_at < expired_before)
    if not conds:
        return 0
    with engine.begin() as conn:
        return conn.execute(dsr_outbox.delete().where(sa.or_(*conds))).rowcount or 0
