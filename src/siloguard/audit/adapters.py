"""Adapters from other parts' event shapes to :class:`~siloguard.audit.AuditSink`.

:class:`DecisionRecorderAdapter` is a ``record(event: dict)`` recorder, the shape the gate
(``policies.gate.DecisionRecorder``) emits, that writes each decision to an audit sink as
an :class:`~siloguard.audit.AuditEvent`. It keeps what the audit schema holds (``decision_id``
as the event id, ``time``, ``actor``, ``action``, ``resource``, ``purpose``, ``decision``,
``reason_code``, ``counts``, ``store``, and ``round``/``request`` if present) and leaves out
the rest (free-text reason, policy details, column names). A malformed event raises
:class:`~siloguard.errors.AuditError`, so the gate releases nothing (it treats a failed
record as a refusal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from siloguard.audit import AuditEvent, AuditSink, new_event_id
from siloguard.errors import AuditError

__all__ = ["DecisionRecorderAdapter"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class DecisionRecorderAdapter:
    """``record(dict)`` -> ``sink.record(AuditEvent)``."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink

    def record(self, event: Mapping[str, Any]) -> None:
        try:
            when = event["time"]
            if isinstance(when, str):
                when = datetime.fromisoformat(when)
            decision_id = str(event.get("decision_id") or "")
            audit_event = AuditEvent(
                actor=event["actor"],
                action=event["action"],
                resource=event["resource"],
                purpose=event["purpose"],
                decision=event["decision"],
                reason=event.get("reason_code"),
                counts=dict(event.get("counts") or {}),
                round=event.get("round"),
                store=event.get("store"),
                request=event.get("request"),
                event_id=decision_id if _UUID.fullmatch(decision_id) else new_event_id(),
                time=when,
            )
        except (KeyError, TypeError, ValueError) as exc:
            name = exc.args[0] if isinstance(exc, KeyError) else type(exc).__name__
            raise AuditError(f"decision event refused: missing or malformed field ({name})") from None
        self._sink.record(audit_event)
