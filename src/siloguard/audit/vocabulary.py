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
``dsr.<status>``              every other transition of a request (``verifying``,
                              ``verified``, ``in_progress``, ``extended``, ``denied``,
                              ``failed``): ``request``, ``resource`` ``dsr:<kind>``,
                              ``reason`` (a code such as ``code-verified``)
``dsr.receipt``               ``store``, ``request``: a store's signed erasure receipt
                              accepted; counts ``rows_erased``, ``rows_remaining``,
                              ``embeddings_erased``, ``keys_destroyed``; decision ``deny``
                              with ``reason`` ``receipt-refused:<why>`` when refused
``dsr.answer_read``           ``request``: a DPO read an access answer (decision ``info``)
``consent.changed``           ``purpose``; ``reason`` ``grant`` or ``withdraw`` (a subject
                              through the privacy API); counts ``stores``
``check.result``              ``resource`` ``check:<rule>``; decision ``allow`` (passed)
                              or ``deny`` (failed); ``reason`` (latest per rule counts)
``compliance.check``          summary of one ``siloguard check``: decision ``allow`` or
                              ``deny``; counts ``rules``, ``failed``, ``warnings``
``compliance.preflight``      the same, for the rules a training run must pass before
                              round 1 (``deny``: the run was refused; ``reason``
                              ``failed:<rule>``)
``retention.enforce``         ``store``; counts ``rows_expired``, ``rows_deleted``
``federation.round``          ``round``; counts ``stores_trained``, ``stores_dropped``,
                              ``updates_rejected``, ``sha256_part1..5`` (the round's model)
``federation.update_accepted``
                              ``store``, ``round``: the store's update was aggregated
``federation.update_rejected``
                              ``store``, ``round``; decision ``deny``; ``reason`` why
``federation.store_dropped``  ``store``, ``round``: sent a message, nothing came back
``model.registered``          ``resource`` ``model:v<n>``; counts ``sha256_part1..5``
``model.rollback``            ``resource`` ``model:v<n>`` (now current); ``reason`` from
``node.enrolled``             ``store``: its SuperNode key registered with the SuperLink
``audit.head_witnessed``      ``store``, ``round``: the store's signed tree head, as counts
                              (``seq``, ``tree_size``, ``timestamp_ms``, ``root1..5``,
                              ``key1..5``, ``sig1..10``; :mod:`siloguard.audit.witness`)
``audit.head_refused``        the same, decision ``deny``; ``reason`` bad-signature,
                              key-mismatch, key-changed or log-went-back
``marketing.export``          ``store``, actor ``staff:<name>``, ``resource``
                              ``export:<kind>`` (campaign, profiles, clv, report),
                              ``reason`` ``decision:<gate decision id>``; counts ``rows``,
                              ``customers`` (and ``control`` for a campaign's held-out arm):
                              recorded before the file is written
``compliance.preflight``      by the coordinator with ``store``: the store's own pre-flight
                              as it reported it (counts ``rules``, ``failed``, ``warnings``)
============================  ==========================================================
"""

from __future__ import annotations

__all__ = [
    "CHECK_RESULT",
    "CONSENT_CHANGED",
    "COMPLIANCE_CHECK",
    "COMPLIANCE_PREFLIGHT",
    "CONSENT_COVERAGE",
    "COUNT_CONSENTED",
    "COUNT_EPSILON_E6",
    "COUNT_SUBJECTS",
    "DSR_ANSWER_READ",
    "DSR_COMPLETED",
    "DSR_ENDED",
    "DSR_EXTENDED",
    "DSR_RECEIPT",
    "DSR_RECEIVED",
    "DSR_TASK_DONE",
    "FEDERATION_ROUND",
    "HEAD_REFUSED",
    "HEAD_WITNESSED",
    "LEGAL_CLOCKS",
    "MODEL_REGISTERED",
    "MODEL_ROLLBACK",
    "MARKETING_EXPORT",
    "NODE_ENROLLED",
    "PRIVACY_SPEND",
    "RETENTION_ENFORCE",
    "STORE_DROPPED",
    "UPDATE_ACCEPTED",
    "UPDATE_REJECTED",
]

CONSENT_COVERAGE = "consent.coverage"
FEDERATION_ROUND = "federation.round"
UPDATE_ACCEPTED = "federation.update_accepted"
UPDATE_REJECTED = "federation.update_rejected"
STORE_DROPPED = "federation.store_dropped"
MODEL_REGISTERED = "model.registered"
MODEL_ROLLBACK = "model.rollback"
NODE_ENROLLED = "node.enrolled"
PRIVACY_SPEND = "privacy.spend"
DSR_RECEIVED = "dsr.received"
DSR_RECEIPT = "dsr.receipt"
DSR_TASK_DONE = "dsr.task_done"
DSR_ANSWER_READ = "dsr.answer_read"
CONSENT_CHANGED = "consent.changed"
DSR_COMPLETED = "dsr.completed"
DSR_EXTENDED = "dsr.extended"
#: Ends of a request other than completion (the report shows them, not "open").
DSR_ENDED = {"dsr.denied": "denied", "dsr.failed": "failed", "dsr.unverified": "closed unverified"}
CHECK_RESULT = "check.result"
COMPLIANCE_CHECK = "compliance.check"
COMPLIANCE_PREFLIGHT = "compliance.preflight"
RETENTION_ENFORCE = "retention.enforce"
HEAD_WITNESSED = "audit.head_witnessed"
HEAD_REFUSED = "audit.head_refused"
MARKETING_EXPORT = "marketing.export"

COUNT_SUBJECTS = "subjects"
COUNT_CONSENTED = "consented"
COUNT_EPSILON_E6 = "epsilon_e6"

# Time allowed to answer a data-subject request, by the regulation named in ``reason``:
# GDPR Art. 12(3) one month from receipt; CCPA Cal. Civ. Code 1798.130(a)(2) 45 days.
# (Both can be extended; an extension is not modelled yet.)
LEGAL_CLOCKS: dict[str, tuple[str, int]] = {"gdpr": ("months", 1), "ccpa": ("days", 45)}
