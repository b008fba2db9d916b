"""The event actions and count names the compliance report reads.

Parts that record these facts should use these constants; the report shows "no data yet"
for a section until such events exist, and never fills a gap with assumptions.

============================  ==========================================================
action                        fields the report uses
============================  ==========================================================
any, decision allow/deny      ``actor``, ``purpose``, ``reason``: gate decisions
``consent.coverage``          ``store``, ``purpose``; counts ``subjects``, ``consented``
                              (the latest event per store and purpose counts)
``privacy.spend``             ``store``, ``round``; counts ``epsilon_e6`` (privacy loss
                              spent in that round, in millionths of epsilon)
``dsr.received``              ``request``; ``resource`` ``dsr:<kind>`` (access, erasure,
                              opt-out, ...); ``reason`` ``gdpr`` or ``ccpa`` (the clock)
``dsr.completed``             ``request``
``check.result``              ``resource`` ``check:<rule>``; decision ``allow`` (passed)
                              or ``deny`` (failed); ``reason`` (latest per rule counts)
============================  ==========================================================
"""

from __future__ import annotations

__all__ = [
    "CHECK_RESULT",
    "CONSENT_COVERAGE",
    "COUNT_CONSENTED",
    "COUNT_EPSILON_E6",
    "COUNT_SUBJECTS",
    "DSR_COMPLETED",
    "DSR_RECEIVED",
    "LEGAL_CLOCKS",
    "PRIVACY_SPEND",
]

CONSENT_COVERAGE = "consent.coverage"
PRIVACY_SPEND = "privacy.spend"
DSR_RECEIVED = "dsr.received"
DSR_COMPLETED = "dsr.completed"
CHECK_RESULT = "check.result"

COUNT_SUBJECTS = "subjects"
COUNT_CONSENTED = "consented"
COUNT_EPSILON_E6 = "epsilon_e6"

# Time allowed to answer a data-subject request, by the regulation named in ``reason``:
# GDPR Art. 12(3) one month from receipt; CCPA Cal. Civ. Code 1798.130(a)(2) 45 days.
# (Both can be extended; an extension is not modelled yet.)
LEGAL_CLOCKS: dict[str, tuple[str, int]] = {"gdpr": ("months", 1), "ccpa": ("days", 45)}
