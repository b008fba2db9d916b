"""The request state machine: which status may follow which, and nothing else.

::

    received -> verifying -> verified -> in_progress -> completed
         \\______________________/ (no verification: CCPA opt-out)   \\-> failed
    extended: in_progress with the deadline moved once (then -> completed | failed)
    denied:   from any status before a terminal one (failed verification, refusal with reasons)
    unverified: verifying whose code expired unused (closed by the sweep; not an open request)

``completed``, ``denied``, ``failed`` and ``unverified`` are terminal.
"""

from __future__ import annotations

__all__ = ["ACTIVE", "STATUSES", "TERMINAL", "TRANSITIONS", "allowed"]

STATUSES: tuple[str, ...] = (
    "received", "verifying", "verified", "in_progress", "extended", "completed", "denied", "failed", "unverified",
)
TERMINAL: frozenset[str] = frozenset({"completed", "denied", "failed", "unverified"})
ACTIVE: frozenset[str] = frozenset(STATUSES) - TERMINAL

TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"verifying", "verified", "denied"}),
    "verifying": frozenset({"verified", "denied", "unverified"}),
    "verified": frozenset({"in_progress", "denied", "failed"}),
    "in_progress": frozenset({"completed", "extended", "denied", "failed"}),
    "extended": frozenset({"completed", "denied", "failed"}),
    "completed": frozenset(),
    "denied": frozenset(),
    "failed": frozenset(),
    "unverified": frozenset(),
}


def allowed(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())
