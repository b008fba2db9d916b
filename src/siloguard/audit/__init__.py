"""siloguard.audit: the append-only, tamper-evident audit log.

What other parts use:

- :class:`AuditEvent`: one fact (ids, decision, counts; never personal data);
- :class:`AuditSink`: the one-method protocol (``record(event) -> EventId``) the gate, the
  federation rounds and the API write through;
- :class:`AuditLog`: the real sink, in the database (``AuditLog.open(settings)``);
  :class:`GroupCommitSink` wraps it for many threads;
- :class:`InMemoryAuditSink`: a fake for unit tests of code that records events.

Modules: ``events`` (event + canonical bytes), ``merkle`` (RFC 9162), ``heads`` (signed
tree heads, keys), ``log`` (append, prove), ``verify`` (whole-log verification), ``report``
(compliance officer report), ``vocabulary`` (the actions and counts the report reads),
``adapters`` (the gate's dict events -> an AuditSink), ``cli`` (``siloguard audit ...``).

A sink: imports nothing from clients/, federation/, recommender/ or api/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from siloguard.audit.events import AuditEvent, EventId, new_event_id
from siloguard.errors import AuditError

if TYPE_CHECKING:
    from siloguard.audit.log import AuditLog, GroupCommitSink

__all__ = [
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "EventId",
    "GroupCommitSink",
    "InMemoryAuditSink",
    "new_event_id",
]


@runtime_checkable
class AuditSink(Protocol):
    """Where audit events go. ``record`` returns once the event is stored (durably, for a
    real sink) and raises :class:`~siloguard.errors.AuditError` if it was refused; callers
    must not carry on with the audited action when it raises (fail closed)."""

    def record(self, event: AuditEvent) -> EventId: ...


class InMemoryAuditSink:
    """An :class:`AuditSink` that keeps events in a list, for unit tests elsewhere.

    It enforces what the real log enforces (only valid events, no id twice) so a test that
    passes with the fake does not fail against the database.
    """

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._ids: set[str] = set()

    def record(self, event: AuditEvent) -> EventId:
        if not isinstance(event, AuditEvent):
            raise AuditError("only AuditEvent objects can be recorded")
        if event.event_id in self._ids:
            raise AuditError("an event with this id was already recorded")
        event.canonical()
        self.events.append(event)
        self._ids.add(event.event_id)
        return event.event_id

    def actions(self) -> list[str]:
        """The recorded events' actions, in order."""
        return [e.action for e in self.events]

    def __len__(self) -> int:
        return len(self.events)


def __getattr__(name: str) -> Any:  # AuditLog pulls in SQLAlchemy: load it when asked for
    if name in ("AuditLog", "GroupCommitSink"):
        from siloguard.audit import log

        return getattr(log, name)
    raise AttributeError(f"module 'siloguard.audit' has no attribute {name!r}")
