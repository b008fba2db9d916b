"""The request state machine: which status may follow which, and nothing else.

::

    received -> verifying -> verified -> in_progress -> completed
         \\______________________/ (no verification: CCPA opt-out)   \\-> failed
    extended: in_progress with the deadline moved once (then -> completed | failed)
    denied:   from any status before a terminal one (failed verification, refusal with reasons)

``completed``, ``denied`` and ``failed`` are terminal.
"""

from __future__ import annotations

__all__ = ["ACTIVE", "STATUSES", "TERMINAL", "TRANSITIONS", "allowed"]

STATUSES: tuple[str, ...] = (
    "received", "verifying", "verified", "in_progress", "extended", "completed", "denied", "failed",
)
TERMINAL: frozenset[str] = frozenset({"completed", "denied", "failed"})
ACTIVE: frozenset[str] = frozenset(STATUSES) - TERMINAL

TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"verifying", "verified", "denied"}),
    "verifying": frozenset({"verified", "denied"}),
    "verified": frozenset({"in_progress", "denied", "failed"}),
    "in_progress": frozenset({"completed", "extended", "denied", "failed"}),
    "extended": frozenset({"completed", "denied", "failed"}),
    "completed": frozenset(),
    "denied": frozenset(),
    "failed": frozenset(),
}


def allowed(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())
