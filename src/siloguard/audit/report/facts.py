"""The facts of the compliance report, computed from the events one signed head covers.

Pure functions of the event JSON objects and the head: the same log and head give the same
facts (times are judged "as of" the head's time, not the clock when the report runs), given
the same answer about which data subjects still exist.

A data subject appears in an event's ``actor`` only as a blinded reference
``subject:b.<32 hex>`` (``SubjectVault.audit_ref``), computable only while the subject's data
key exists. ``collect`` takes a resolver (``subjects``) that says whether a ``b.<hex>``
reference still resolves: one that does not belongs to an erased subject and its gate
decisions are shown under the actor :data:`ERASED_SUBJECT`. Without a resolver (nobody gave
the report any store keys) blinded references are shown as recorded and the ``subjects``
section says they were not resolved. Older forms (``subject:v<N>.<hex>``, a store pseudonym,
and ``subject:unidentified``) are shown as recorded.
"""

from __future__ import annotations

import calendar
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from siloguard.audit import vocabulary as v
from siloguard.audit.heads import SignedTreeHead

__all__ = ["ERASED_SUBJECT", "NO_DATA", "SubjectResolver", "collect"]

NO_DATA = "no data yet"
OK = "ok"
ERASED_SUBJECT = "erased-subject"
SUBJECT_PREFIX = "subject:"
_BLINDED = re.compile(r"b\.[0-9a-f]{32}")

#: Says whether a blinded reference ``b.<32 hex>`` (without ``subject:``) still resolves,
#: i.e. whether the subject's data key still exists in some store's key store.
SubjectResolver = Callable[[str], bool]


def _day(event: dict[str, Any]) -> str:
    return str(event["time"])[:10]


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _add_months(when: datetime, months: int) -> datetime:
    month = when.month - 1 + months
    year, month = when.year + month // 12, month % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Subjects:
    """Judges ``subject:b.<hex>`` actors and counts the events that name a data subject."""

    def __init__(self, resolver: SubjectResolver | None, stores: Collection[str] | None) -> None:
        self.resolver = resolver
        self.stores = None if stores is None else frozenset(stores)
        self.subject_events = 0
        self.erased_events = 0
        self.unresolved_events = 0

    def actor(self, event: dict[str, Any]) -> str:
        """The actor label the report shows for ``event`` (counting it on the way)."""
        actor = event["actor"]
        if not actor.startswith(SUBJECT_PREFIX):
            return actor
        self.subject_events += 1
        ref = actor[len(SUBJECT_PREFIX) :]
        if not _BLINDED.fullmatch(ref):
            return actor  # subject:v<N>.<hex> (a store pseudonym) or subject:unidentified
        store = event["related"].get("store")
        if self.resolver is None or (self.stores is not None and store is not None and store not in self.stores):
            self.unresolved_events += 1  # no key of this event's store was given: cannot tell
            return actor
        if self.resolver(ref):
            return actor
        self.erased_events += 1
        return ERASED_SUBJECT

    def section(self) -> dict[str, Any]:
        resolved = self.resolver is not None
        stores = sorted(self.stores) if resolved and self.stores is not None else None
        if not resolved:
            note = ("subjects were not resolved: no store keys were available, so blinded subject references "
                    "are shown as recorded and erased subjects cannot be told apart")
        else:
            keys = "the keys of store(s) " + ", ".join(stores) if stores else "the store keys given"
            note = (f"blinded subject references were resolved with {keys}; a reference that no longer resolves "
                    f"belongs to an erased subject (its key was destroyed) and is shown as {ERASED_SUBJECT}")
            if self.unresolved_events:
                note += f"; {self.unresolved_events} event(s) of stores whose keys were not available are shown as recorded"
        return {
            "resolved": resolved,
            "key_stores": stores,
            "subject_events": self.subject_events,
            "erased_subject_events": self.erased_events if resolved else None,
            "unresolved_events": self.unresolved_events,
            "note": note,
        }


class _Collector:
    def __init__(self, as_of: datetime, subjects: _Subjects) -> None:
        self.as_of = as_of
        self.subjects = subjects
        self.total = 0
        self.by_day_action: Counter[tuple[str, str]] = Counter()
        self.decisions: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.denials: Counter[tuple[str, str]] = Counter()
        self.consent: dict[tuple[str, str], tuple[int, int]] = {}
        self.spend: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.dsr: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.heads: dict[str, dict[str, Any]] = {}  # store -> its latest witnessed head, and counts
        self.caps: dict[str, tuple[int, int | None]] = {}  # store -> (epsilon cap e6, delta e12) it reported
        self.incidents: dict[str, dict[str, Any]] = {}
        self.receipts: dict[str, dict[str, Any]] = defaultdict(lambda: {"receipts": 0, "requests": set(), "last": None})

    def add(self, e: dict[str, Any]) -> None:
        self.total += 1
        action, related, counts = e["action"], e["related"], e["counts"]
        self.by_day_action[(_day(e), action)] += 1
        actor = self.subjects.actor(e)
        if e["decision"] in ("allow", "deny") and action not in (v.CHECK_RESULT, v.HEAD_REFUSED):
            self.decisions[(actor, e["purpose"])][e["decision"]] += 1
            if e["decision"] == "deny":
                self.denials[(e["reason"] or "unspecified", e["purpose"])] += 1
        if action == v.CONSENT_COVERAGE and related["store"] and v.COUNT_SUBJECTS in counts and v.COUNT_CONSENTED in counts:
            self.consent[(related["store"], e["purpose"])] = (counts[v.COUNT_SUBJECTS], counts[v.COUNT_CONSENTED])
        elif action == v.PRIVACY_SPEND and related["store"] and related["round"] is not None and v.COUNT_EPSILON_E6 in counts:
            self.spend[related["store"]][related["round"]] += counts[v.COUNT_EPSILON_E6]
            if "epsilon_cap_e6" in counts:
                self.caps[related["store"]] = (counts["epsilon_cap_e6"], counts.get("delta_e12"))
        elif action.startswith("incident.") and e["resource"].startswith("incident:"):
            self._incident(e)
        elif action == v.DSR_RECEIPT and related["store"]:
            seen = self.receipts[related["store"]]
            seen["receipts"] += 1
            if related["request"]:
                seen["requests"].add(related["request"])
            seen["last"] = max(seen["last"] or e["time"], e["time"])
        elif action == v.DSR_RECEIVED and related["request"]:
            kind = e["resource"].split(":", 1)[1] if e["resource"].startswith("dsr:") else e["resource"]
            self.dsr.setdefault(related["request"], {}).update(
                {"kind": kind, "regulation": e["reason"], "received": _parse_time(e["time"])}
            )
            if "due_epoch_s" in counts:  # the deadline the API gave (siloguard.dsr.clocks)
                self.dsr[related["request"]]["due"] = datetime.fromtimestamp(counts["due_epoch_s"], timezone.utc)
        elif action == v.DSR_EXTENDED and related["request"] and "due_epoch_s" in counts:
            info = self.dsr.setdefault(related["request"], {})
            info["due"] = datetime.fromtimestamp(counts["due_epoch_s"], timezone.utc)
            info["extended"] = True
        elif action == v.DSR_COMPLETED and related["request"]:
            self.dsr.setdefault(related["request"], {})["completed"] = _parse_time(e["time"])
        elif action in v.DSR_ENDED and related["request"]:
            self.dsr.setdefault(related["request"], {})["ended"] = v.DSR_ENDED[action]
        elif action in (v.HEAD_WITNESSED, v.HEAD_REFUSED) and related["store"]:
            seen = self.heads.setdefault(related["store"], {
                "store": related["store"], "seq": None, "tree_size": None, "round": None, "signed": None, "recorded": None,
                "witnessed": 0, "refused": 0, "last_refusal": None,
            })
            if action == v.HEAD_WITNESSED and "tree_size" in counts:
                seen["witnessed"] += 1
                seen.update({"seq": counts["seq"], "tree_size": counts["tree_size"], "round": related["round"],
                             "signed": _iso(datetime.fromtimestamp(counts["timestamp_ms"] / 1000, timezone.utc)),
                             "recorded": e["time"]})
            else:
                seen["refused"] += 1
                seen["last_refusal"] = e["reason"]
        elif action == v.CHECK_RESULT:
            rule = e["resource"].split(":", 1)[1] if e["resource"].startswith("check:") else e["resource"]
            clock = counts.get("clock_epoch_s")
            self.checks[rule] = {
                "check": rule,
                "result": {"allow": "passed", "deny": "failed"}.get(e["decision"], "info"),
                "reason": e["reason"],
                "time": e["time"],
                "counts": {k: n for k, n in sorted(counts.items()) if k != "clock_epoch_s"},
                "clock": (f"stored rows aged at {_iso(datetime.fromtimestamp(clock, timezone.utc))}" if clock is not None
                          else "the wall clock when the check ran"),
            }

    def _incident(self, e: dict[str, Any]) -> None:
        """Fold an incident's events: the latest counts and deadlines, which notifications were made."""
        incident_id = e["resource"].split(":", 1)[1]
        row = self.incidents.setdefault(incident_id, {"incident": incident_id, "kind": None, "risk": None, "opened": e["time"],
                                                      "closed": None, "close_reason": None, "notified": {}, "dues": {}})
        counts = e["counts"]
        row.update(subjects=counts.get("subjects", 0), records=counts.get("records", 0), stores=counts.get("stores", 0))
        row["dues"] = {k[: -len("_due_epoch_s")]: n for k, n in counts.items() if k.endswith("_due_epoch_s") and k != "notified_epoch_s"}
        if e["action"] == "incident.opened" and e["reason"] and "-" in e["reason"]:
            row["kind"], row["risk"] = e["reason"].split("-", 1)
        elif e["action"] == "incident.notified" and e["reason"]:  # when it was made, as recorded (--at), else logged
            made = counts.get("notified_epoch_s")
            row["notified"][e["reason"].removesuffix("-late")] = (
                datetime.fromtimestamp(made, timezone.utc) if made is not None else _parse_time(e["time"]))
        elif e["action"] == "incident.closed":
            row["closed"], row["close_reason"] = e["time"], e["reason"]

    # ---- sections -------------------------------------------------------------------
    def events_by_type(self) -> dict[str, Any]:
        days = sorted({d for d, _ in self.by_day_action})
        totals = Counter[str]()
        for (_, action), n in self.by_day_action.items():
            totals[action] += n
        actions = [
            {"action": a, "total": totals[a], "per_day": [self.by_day_action.get((d, a), 0) for d in days]}
            for a in sorted(totals, key=lambda a: (-totals[a], a))
        ]
        return {"status": OK if self.total else NO_DATA, "days": days, "actions": actions, "total": self.total}

    def gate_decisions(self) -> dict[str, Any]:
        rows = [
            {"actor": actor, "purpose": purpose, "allow": c["allow"], "deny": c["deny"]}
            for (actor, purpose), c in sorted(self.decisions.items())
        ]
        denials = [
            {"reason": reason, "purpose": purpose, "count": n}
            for (reason, purpose), n in sorted(self.denials.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        return {"status": OK if rows else NO_DATA, "by_principal_purpose": rows, "denials_by_reason": denials}

    def consent_coverage(self) -> dict[str, Any]:
        rows = [
            {"store": store, "purpose": purpose, "subjects": subjects, "consented": consented,
             "coverage": round(consented / subjects, 4) if subjects > 0 else None}
            for (store, purpose), (subjects, consented) in sorted(self.consent.items())
        ]
        return {"status": OK if rows else NO_DATA, "rows": rows}

    def privacy_budget(self) -> dict[str, Any]:
        stores = []
        for store in sorted(self.spend):
            cumulative, rounds = 0, []
            for rnd in sorted(self.spend[store]):
                cumulative += self.spend[store][rnd]
                rounds.append({"round": rnd, "epsilon_e6": self.spend[store][rnd], "cumulative_epsilon_e6": cumulative})
            cap, delta = self.caps.get(store, (None, None))
            stores.append({"store": store, "rounds": rounds, "total_epsilon_e6": cumulative, "cap_epsilon_e6": cap,
                           "delta": delta / 1e12 if delta is not None else None})
        return {"status": OK if stores else NO_DATA, "stores": stores}

    def incidents_section(self) -> dict[str, Any]:
        """The incident register as the audit log tells it: deadlines and notifications per incident."""
        rows = []
        for incident_id in sorted(self.incidents):
            info = self.incidents[incident_id]
            notifications = []
            for key, due_s in sorted(info["dues"].items(), key=lambda kv: kv[1]):
                party, jurisdiction = key.split("_", 1)
                due = datetime.fromtimestamp(due_s, timezone.utc)
                made = info["notified"].get(party)
                if made is not None:
                    state = "made on time" if made <= due else "made late"
                else:
                    state = "overdue" if self.as_of > due else "due"
                notifications.append({"to": party, "jurisdiction": jurisdiction, "due": _iso(due), "made": _iso(made), "state": state})
            rows.append({"incident": incident_id, "kind": info["kind"], "risk": info["risk"], "subjects": info["subjects"],
                         "records": info["records"], "stores": info["stores"], "opened": info["opened"], "closed": info["closed"],
                         "close_reason": info["close_reason"], "notifications": notifications})
        return {"status": OK if rows else NO_DATA, "rows": rows}

    def erasure_receipts(self) -> dict[str, Any]:
        """Per store: signed erasure receipts the service accepted (dsr.receipt), for how many requests, the latest."""
        rows = [{"store": store, "receipts": r["receipts"], "requests": len(r["requests"]), "last": r["last"]}
                for store, r in sorted(self.receipts.items())]
        return {"status": OK if rows else NO_DATA, "rows": rows}

    def data_subject_requests(self) -> dict[str, Any]:
        rows = []
        for request in sorted(self.dsr):
            info = self.dsr[request]
            received, completed = info.get("received"), info.get("completed")
            regulation = info.get("regulation")
            clock = v.LEGAL_CLOCKS.get(regulation or "")
            due = info.get("due")
            if due is None and received is not None and clock is not None:  # events recorded before deadlines were
                unit, amount = clock
                due = _add_months(received, amount) if unit == "months" else received + timedelta(days=amount)
            if info.get("ended"):
                state = info["ended"]
            elif received is None:
                state = "completion recorded without a receipt"
            elif due is None:
                state = "no legal clock (regulation not recorded)" if completed is None else "completed"
            elif completed is not None:
                state = "completed on time" if completed <= due else "completed late"
            else:
                state = "overdue" if self.as_of > due else "open"
            rows.append({
                "request": request, "kind": info.get("kind"), "regulation": regulation,
                "received": _iso(received), "due": _iso(due), "completed": _iso(completed), "state": state,
            })
        return {"status": OK if rows else NO_DATA, "as_of": _iso(self.as_of), "rows": rows}

    def witnessed_heads(self) -> dict[str, Any]:
        """Each store's latest signed head of its own log, as the coordinator witnessed it."""
        rows = [self.heads[k] for k in sorted(self.heads)]
        return {"status": OK if rows else NO_DATA, "rows": rows}

    def summary(self, sections: dict[str, Any]) -> dict[str, Any]:
        """What an officer needs first: failed checks, refusals, requests open or overdue and the
        nearest deadline, the highest privacy spend, stores' logs witnessed or refused."""
        requests = sections["data_subject_requests"]["rows"]
        open_rows = [r for r in requests if r["state"] in ("open", "overdue")]
        due = sorted(r["due"] for r in open_rows if r["due"])
        days_left = None
        if due:
            days_left = round((datetime.strptime(due[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) - self.as_of)
                              .total_seconds() / 86400, 1)
        spend = sections["privacy_budget"]["stores"]
        top = max(spend, key=lambda s: s["total_epsilon_e6"]) if spend else None
        heads = sections["witnessed_heads"]["rows"]
        return {
            "checks_failed": sum(1 for r in sections["checks"]["rows"] if r["result"] == "failed"),
            "denials": sum(r["count"] for r in sections["gate_decisions"]["denials_by_reason"]),
            "requests_open": len(open_rows),
            "requests_overdue": sum(1 for r in requests if r["state"] == "overdue"),
            "next_due": due[0] if due else None,
            "next_due_days_left": days_left,
            "highest_spend_store": top["store"] if top else None,
            "highest_spend_epsilon_e6": top["total_epsilon_e6"] if top else None,
            "stores_witnessed": sum(1 for h in heads if h["witnessed"]),
            "heads_refused": sum(h["refused"] for h in heads),
            "stores_near_cap": sorted(s["store"] for s in spend
                                      if s["cap_epsilon_e6"] and s["total_epsilon_e6"] >= 0.9 * s["cap_epsilon_e6"]),
            "incidents_open": sum(1 for r in sections["incidents"]["rows"] if r["closed"] is None),
            "notifications_overdue": sum(1 for r in sections["incidents"]["rows"] for n in r["notifications"] if n["state"] == "overdue"),
        }

    def check_results(self) -> dict[str, Any]:
        rows = [self.checks[k] for k in sorted(self.checks)]
        return {"status": OK if rows else NO_DATA, "rows": rows}


def collect(
    events: Iterable[dict[str, Any]],
    head: SignedTreeHead,
    *,
    after_head: int,
    subjects: SubjectResolver | None = None,
    subject_stores: Collection[str] | None = None,
) -> dict[str, Any]:
    """All report sections for ``events`` (the JSON objects of events ``0 .. head.tree_size-1``).

    ``subjects`` says whether a blinded reference ``b.<hex>`` still resolves (None: no store
    keys, nothing is resolved). ``subject_stores``, if given, names the stores whose keys the
    resolver holds: a blinded actor of an event recorded for another store is left as recorded
    (unresolved) instead of being taken for an erased subject.
    """
    c = _Collector(as_of=head.time, subjects=_Subjects(subjects, subject_stores))
    for event in events:
        c.add(event)
    if c.total != head.tree_size:
        raise ValueError(f"the report needs the {head.tree_size} events of head #{head.seq}, got {c.total}")
    sections = {
        "tree_head": head.to_json(),
        "log": {"events": c.total, "events_after_head": after_head, "as_of": _iso(head.time)},
        "events_by_type": c.events_by_type(),
        "gate_decisions": c.gate_decisions(),
        "subjects": c.subjects.section(),
        "consent_coverage": c.consent_coverage(),
        "privacy_budget": c.privacy_budget(),
        "data_subject_requests": c.data_subject_requests(),
        "checks": c.check_results(),
        "witnessed_heads": c.witnessed_heads(),
        "incidents": c.incidents_section(),
        "erasure_receipts": c.erasure_receipts(),
    }
    sections["summary"] = c.summary(sections)
    return sections

