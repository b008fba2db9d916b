"""What a request asks of the stores, as tasks each store does on its own site
(:class:`StoreEffects`, a part of :class:`~siloguard.dsr.service.DsrService`).

The service holds no store key and no consent registry: once a request is verified it files
one task per store (``dsr_tasks``), and each store pulls its tasks (``siloguard store sync``),
does them with its own keys and answers:

- ``effects``: consent events to record in the store's registry (grants, withdrawals, opt-outs
  of sale and sharing, a GPC signal); the store says ``done``;
- ``access``: the store builds its part of the answer through its own gate and, when the
  subject gave a key, seals it to that key before it leaves the store; the service keeps the
  parts (ciphertext when sealed) until the subject downloads the answer.

A request completes when every store has done its task. Erasure is the same queue with
signed receipts (:mod:`siloguard.dsr.erasure`).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.audit import AuditEvent
from siloguard.audit.vocabulary import CONSENT_CHANGED
from siloguard.dsr.common import ANSWER_DELETED, CONSENT_KINDS, LOCK, SUBJECT_ACTOR, SYSTEM, consent_purposes
from siloguard.dsr.errors import DsrConflict, DsrInvalid, DsrNotFound
from siloguard.dsr.machine import TERMINAL
from siloguard.storage.db import exclusive
from siloguard.storage.orm import dsr_requests, dsr_tasks

__all__ = ["MAX_ANSWER_CHARS", "StoreEffects", "for_subject"]

#: The largest answer a store may post for one access task (characters of JSON).
MAX_ANSWER_CHARS = 4_000_000
#: Consent changes of one subject that may wait for the stores at once (each is a task per store).
MAX_WAITING_CHANGES = 20


# The tasks that carry what a subject asked (consent changes, opt-outs, access), while live.
# Spelled as ORs of equalities rather than IN lists: an IN list is expanded into the SQL on
# every execution (SQLAlchemy's "post-compile" step), which showed in the API's profile.
_ASKED_TASKS = sa.and_(
    sa.or_(dsr_tasks.c.kind == "effects", dsr_tasks.c.kind == "access"),
    sa.or_(dsr_tasks.c.status == "pending", dsr_tasks.c.status == "claimed", dsr_tasks.c.status == "done"),
)
_ENTRY_KEYS = ("store", "dataset", "records", "categories", "data")
# What a subject asked the stores, oldest first: built once. A statement object built per call
# costs its construction and a fresh cache key every time (a fifth of the consent lookup's CPU
# in a profile); this one's key is computed once and the compiled SQL comes from the cache.
_ASKED = (
    sa.select(dsr_requests.c.id, dsr_requests.c.kind, dsr_requests.c.jurisdiction, dsr_requests.c.payload,
              dsr_requests.c.gpc, dsr_requests.c.received_at, dsr_tasks.c.store, dsr_tasks.c.status)
    .join(dsr_tasks, dsr_tasks.c.request_id == dsr_requests.c.id)
    .where(dsr_requests.c.subject_digest == sa.bindparam("digest"), _ASKED_TASKS)
    .order_by(dsr_requests.c.received_at, dsr_requests.c.id)
)


def _sealed_shape(sealed: object) -> bool:
    if not isinstance(sealed, dict) or set(sealed) != {"alg", "epk", "nonce", "ciphertext"}:
        return False
    return all(isinstance(v, str) and 0 < len(v) <= MAX_ANSWER_CHARS for v in sealed.values())


def _part_shape(part: object, store: str) -> bool:
    """One entry, for this store: records a count, categories and data lists of objects."""
    if not isinstance(part, dict) or not isinstance(part.get("stores"), list) or len(part["stores"]) != 1:
        return False
    entry = part["stores"][0]
    if not isinstance(entry, dict) or not set(_ENTRY_KEYS) <= set(entry) or entry["store"] != store:
        return False
    records = entry["records"]
    return (
        isinstance(records, int) and not isinstance(records, bool) and 0 <= records < 10**9
        and isinstance(entry["dataset"], str)
        and isinstance(entry["categories"], list) and all(isinstance(c, dict) for c in entry["categories"])
        and isinstance(entry["data"], list) and all(isinstance(r, dict) for r in entry["data"])
        and len(entry["data"]) == records
    )


def for_subject(answer: dict[str, Any], customer_ref: str) -> dict[str, Any]:
    """The answer as its verified subject downloads it: their customer number in place of the
    stores' pseudonym of it (Art. 15 gives them their data as they know it, not a key they
    cannot read). Sealed answers are left as they are (the service cannot read them)."""
    if "sealed" in answer or not customer_ref:
        return answer
    from siloguard.policies.datamap import load_datamaps

    column = load_datamaps()["transactions"].subject_column
    stores = [{**s, "data": [{**row, column: customer_ref} if column in row else row for row in s.get("data", [])]}
              for s in answer.get("stores", [])]
    return {**answer, "stores": stores, "subject": {**answer.get("subject", {}), "customer_number": customer_ref}}


#: How a consent choice reads in an access answer (see consent_state).
_CONSENT_WORDS = {True: "granted through this service", False: "withdrawn or opted out through this service",
                  None: "as recorded by the store (not changed through this service)"}


class StoreEffects:
    """Consent, GPC and access as store tasks; mixed into DsrService."""

    engine: Engine

    # ---- what a request asks of each store -------------------------------------------------
    def _effect_events(self, request: dict[str, Any]) -> list[dict[str, str]]:
        """The consent events a verified request asks each store to record (none for erasure or access)."""
        from siloguard.policies.consent import SALE_AND_SHARING

        kind = request["kind"]
        events: list[dict[str, str]] = []
        if kind == "opt_out":
            if request["jurisdiction"] == "gdpr":  # an objection: every consent-based purpose too
                events += [{"purpose": p, "event": "withdraw", "source": "api"} for p in consent_purposes()]
            events += [{"purpose": p, "event": "opt_out", "source": "api"} for p in SALE_AND_SHARING]
        elif kind == "consent":
            events += [{"purpose": c["purpose"], "event": c["action"], "source": "api"}
                       for c in json.loads(request["payload"]).get("consent", [])]
        return events

    def _task_payload(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["kind"] == "access":  # (a GPC signal sent with it is recorded as the store answers)
            key = json.loads(request["payload"]).get("answer_key")
            return ({"answer_key": key} if key else {}) | ({"gpc": True} if request["gpc"] else {})
        return {"events": self._effect_events(request), "gpc": bool(request["gpc"])}

    def _start_store_work(self, request: dict[str, Any]) -> bool:
        """A verified access, consent or opt-out request: one task per store, then ``in_progress``."""
        if request["kind"] != "erasure" and request["kind"] != "access" and self.erasing(request["subject_digest"]):
            # stores are erasing the subject: nothing new is recorded about them (docs/API.md)
            self._move(request["id"], "in_progress", reason="processing")  # type: ignore[attr-defined]
            return self._move(request["id"], "completed", reason="subject-being-erased",  # type: ignore[attr-defined]
                              result={"applied": {"skipped": "the stores are erasing you"}})
        stores = self._stores()  # type: ignore[attr-defined]
        if not stores:
            return self._move(request["id"], "failed", reason="no-stores",  # type: ignore[attr-defined]
                              result={"error": "no stores are enrolled"})
        kind = "access" if request["kind"] == "access" else "effects"
        payload = json.dumps(self._task_payload(request), sort_keys=True)
        now = self.clock()  # type: ignore[attr-defined]
        events: list[AuditEvent] = []
        try:
            with exclusive(self.engine, LOCK) as conn:
                current = self._load(conn, request["id"])  # type: ignore[attr-defined]
                if current["status"] != "verified":
                    return False
                held = set(conn.execute(sa.select(dsr_tasks.c.store).where(dsr_tasks.c.request_id == request["id"])).scalars())
                rows = [
                    {"id": f"task-{uuid.uuid4()}", "request_id": request["id"], "store": store, "status": "pending",
                     "customer_ref": current["customer_ref"], "created_at": now, "kind": kind, "payload": payload}
                    for store in stores if store not in held
                ]
                if rows:
                    conn.execute(dsr_tasks.insert(), rows)
                self._transition(conn, current, "in_progress", events=events, actor=SYSTEM,  # type: ignore[attr-defined]
                                 reason="tasks-created", now=now)
        except DsrConflict:
            return False
        self._append(events)  # type: ignore[attr-defined]
        return True

    # ---- a store's answer --------------------------------------------------------------------
    def task_done(self, store: str, task_id: str, answer: str | None, *, actor: str) -> dict[str, Any]:
        """A store did its ``effects`` or ``access`` task (``answer``: its part of an access answer).

        An access part is checked before it is kept: sealed (``{"sealed": {...}}``) when the
        subject gave a key, else ``{"part": {...}}`` naming this store only.
        """
        now = self.clock()  # type: ignore[attr-defined]
        request_id: str | None = None
        try:
            with exclusive(self.engine, LOCK) as conn:
                task = conn.execute(
                    sa.select(dsr_tasks).where(dsr_tasks.c.id == task_id, dsr_tasks.c.store == store)
                ).mappings().first()
                if task is None:
                    raise DsrNotFound("no such task for this store; pull the store's tasks again")
                request_id = task["request_id"]
                if task["kind"] == "erasure":
                    raise DsrConflict("an erasure task is finished with a signed receipt (POST .../receipt)")
                if task["status"] == "done":
                    raise DsrConflict("this task is done already")
                status = conn.execute(sa.select(dsr_requests.c.status).where(dsr_requests.c.id == request_id)).scalar()
                if task["status"] not in ("pending", "claimed") or status in TERMINAL:
                    raise DsrConflict(f"the request is {status}: its task is no longer wanted")
                kept = self._checked_answer(task, answer) if task["kind"] == "access" else None
                conn.execute(
                    dsr_tasks.update().where(dsr_tasks.c.id == task_id)
                    .values(status="done", done_at=now, customer_ref=None, answer=kept)
                )
        except (DsrConflict, DsrInvalid) as exc:  # a refused answer leaves a trace, like a refused receipt
            self._append([self._done_event(store, request_id, task_kind=None, actor=actor, decision="deny",  # type: ignore[attr-defined]
                                           reason="refused:" + ("invalid" if isinstance(exc, DsrInvalid) else "conflict"))])
            raise
        self._append([self._done_event(store, request_id, task_kind=task["kind"], actor=actor, decision="info",  # type: ignore[attr-defined]
                                       reason="done")])
        self._maybe_complete(task["request_id"])
        return self.get(task["request_id"])  # type: ignore[attr-defined]

    @staticmethod
    def _done_event(store: str, request_id: str | None, *, task_kind: str | None, actor: str, decision: str,
                    reason: str) -> AuditEvent:
        from siloguard.audit.vocabulary import DSR_TASK_DONE
        from siloguard.dsr.common import PURPOSE

        return AuditEvent(actor=actor, action=DSR_TASK_DONE, resource=f"dsr:{task_kind or 'task'}", purpose=PURPOSE,
                          decision=decision, reason=reason, store=store, request=request_id)  # type: ignore[arg-type]

    @staticmethod
    def _checked_answer(task: Any, answer: str | None) -> str:
        """A store's part, checked in full before it is kept (a bad part must not wedge the request)."""
        if answer is None or len(answer) > MAX_ANSWER_CHARS:
            raise DsrInvalid(f"an access task needs its answer (JSON, at most {MAX_ANSWER_CHARS:,} characters)")
        try:
            data = json.loads(answer)
        except (ValueError, RecursionError):
            raise DsrInvalid("the answer is not JSON") from None
        sealed_wanted = bool(json.loads(task["payload"] or "{}").get("answer_key"))
        if sealed_wanted:
            sealed = data.get("sealed") if isinstance(data, dict) and set(data) == {"sealed"} else None
            if not _sealed_shape(sealed):
                raise DsrInvalid("this answer must leave the store sealed to the subject's key: "
                                 "{\"sealed\": {\"alg\", \"epk\", \"nonce\", \"ciphertext\"}}")
            return json.dumps({"sealed": sealed}, sort_keys=True)
        part = data.get("part") if isinstance(data, dict) and set(data) == {"part"} else None
        if not _part_shape(part, task["store"]):
            raise DsrInvalid("the answer must be {\"part\": {\"stores\": [one entry for this store: store, dataset, "
                             "records, categories, data]}} with this store's records only")
        entry = part["stores"][0]
        return json.dumps({"part": {"stores": [{k: entry[k] for k in _ENTRY_KEYS}]}}, sort_keys=True)

    def _maybe_complete(self, request_id: str) -> bool:
        """Every store did its task: complete the request (the access answer assembled from the parts)."""
        tasks = self.tasks(request_id)  # type: ignore[attr-defined]
        if not tasks or any(t["status"] != "done" for t in tasks):
            return False
        request = self.get(request_id)  # type: ignore[attr-defined]
        if request["kind"] == "access":
            result = self._assemble(request, tasks)
        else:
            result = {"applied": self._effects_summary(request)}
        done = self._move(request_id, "completed", reason="done", result=result)  # type: ignore[attr-defined]
        with exclusive(self.engine, LOCK) as conn:  # the parts live on in the result only
            conn.execute(dsr_tasks.update().where(dsr_tasks.c.request_id == request_id).values(answer=None))
        return done

    def _assemble(self, request: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
        """The answer from the stores' parts; what is the same for every store (purposes, lawful
        bases, retention, recipients, source, profiling, rights) comes from the service's own data
        map, not a store; the subject's customer number and consent choices from the request and
        the service's own records of what the subject asked."""
        parts = [(t["store"], json.loads(t["answer"])) for t in sorted(tasks, key=lambda t: t["store"])]
        if all("sealed" in p for _, p in parts):
            return {"sealed": [{"store": store, "sealed": p["sealed"]} for store, p in parts]}
        from siloguard.policies.datamap import access_answer

        answer = access_answer([p["part"]["stores"][0] for _, p in parts if "part" in p], jurisdiction=request["jurisdiction"])
        ref = request.get("customer_ref")
        # No customer number here: the stored answer (which the DPO may read) keeps the stores'
        # pseudonyms; the subject's own download puts their number back (for_subject).
        answer["subject"] = {"request": request["id"], "jurisdiction": request["jurisdiction"]}
        answer["consent"] = [] if not ref else [
            {"store": store, "purposes": [{"purpose": p, "state": _CONSENT_WORDS[consented], "recorded_by_store": applied}
                                          for p, consented, applied in purposes]}
            for store, purposes in self.consent_state(ref)
        ]
        return answer

    def _effects_summary(self, request: dict[str, Any]) -> dict[str, Any]:
        stores = sorted(t["store"] for t in self.tasks(request["id"]))  # type: ignore[attr-defined]
        if request["kind"] == "consent":
            return {"consent": json.loads(request["payload"]).get("consent", []), "gpc": bool(request["gpc"]), "stores": stores}
        from siloguard.policies.consent import SALE_AND_SHARING

        withdrawn = list(consent_purposes()) if request["jurisdiction"] == "gdpr" else []
        return {"opted_out": list(SALE_AND_SHARING), "consent_withdrawn": withdrawn, "stores": stores}

    # ---- a verified subject's consent, through requests ---------------------------------------
    def _file_verified(self, customer_ref: str, changes: list[dict[str, str]], *, gpc: bool) -> str:
        """A consent change a verified subject makes in their session: a request filed verified."""
        from siloguard.dsr import clocks

        digest = self.digest(customer_ref)  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            waiting = conn.execute(
                sa.select(sa.func.count()).select_from(dsr_requests).where(
                    dsr_requests.c.subject_digest == digest, dsr_requests.c.kind == "consent",
                    dsr_requests.c.status.in_(["verified", "in_progress", "extended"]))
            ).scalar_one()
        if waiting >= MAX_WAITING_CHANGES:
            raise DsrConflict(f"{waiting} of your consent changes are still on their way to the stores (they apply "
                              "them when they next sync): try again once those are done")
        jur = self.jurisdiction()  # type: ignore[attr-defined]
        now = self.clock()  # type: ignore[attr-defined]
        row = self._new_row("consent", jur, clocks.clock_for(jur, "consent", now), now, digest=digest,  # type: ignore[attr-defined]
                            customer_ref=customer_ref, contact=None, idempotency_key=None, gpc=gpc,
                            payload={"consent": changes})
        request_id = row["id"]

        self._writer.run(self._new_request(row, "verified", actor=SUBJECT_ACTOR, reason="subject-session", now=now,  # type: ignore[attr-defined]
                                           moved_by=SUBJECT_ACTOR))
        self._try_advance(request_id)  # type: ignore[attr-defined]
        return request_id

    def record_gpc(self, customer_ref: str) -> None:
        """``Sec-GPC: 1`` from a verified subject: an opt-out of sale and sharing in every store
        (filed once: a signal already on its way or applied is not filed again)."""
        if not self._opted_out_last(self.digest(customer_ref)):  # type: ignore[attr-defined]
            self._file_verified(customer_ref, [], gpc=True)

    def _opted_out_last(self, digest: str) -> bool:
        """Whether the subject's latest word here on every sale/sharing purpose is an opt-out
        (a GPC signal needs no new request then; after a later grant it does)."""
        from siloguard.policies.consent import SALE_AND_SHARING

        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dsr_requests.c.kind, dsr_requests.c.jurisdiction, dsr_requests.c.payload, dsr_requests.c.gpc,
                          dsr_requests.c.id)
                .where(dsr_requests.c.subject_digest == digest,
                       dsr_requests.c.status.in_(["verified", "in_progress", "extended", "completed"]))
                .order_by(dsr_requests.c.received_at, dsr_requests.c.id)
            ).mappings().all()
        latest: dict[str, str] = {}
        for row in rows:
            for event in self._effect_events(dict(row)):
                latest[event["purpose"]] = event["event"]
            if row["gpc"] and row["kind"] != "erasure":
                latest.update(dict.fromkeys(SALE_AND_SHARING, "opt_out"))
        return all(latest.get(p) == "opt_out" for p in SALE_AND_SHARING)

    def change_consent(self, customer_ref: str, purpose: str, action: str) -> str:
        """Grant or withdraw consent for ``purpose`` in every store (a task each); audited. Returns the request id."""
        from siloguard.policies.taxonomy import load_taxonomy

        if action not in CONSENT_KINDS:
            raise DsrInvalid(f"consent action must be one of {', '.join(CONSENT_KINDS)}")
        if not load_taxonomy().is_use(purpose):
            raise DsrInvalid("unknown purpose: use a fideslang data use (policies/taxonomy.yaml)")
        request_id = self._file_verified(customer_ref, [{"purpose": purpose, "action": action}], gpc=False)
        self.audit.append([  # type: ignore[attr-defined]
            AuditEvent(actor=SUBJECT_ACTOR, action=CONSENT_CHANGED, resource="consent", purpose=purpose,
                       decision="info", reason=action, counts={"stores": len(self._stores())},  # type: ignore[attr-defined]
                       request=request_id)
        ])
        return request_id

    def consent_state(self, customer_ref: str) -> list[tuple[str, list[tuple[str, bool | None, bool]]]]:
        """Per store and purpose: what the subject last asked through this service, and whether the store did it.

        ``(purpose, consented, applied)``: ``consented`` True (granted), False (withdrawn or
        opted out) or None (never asked here: the store's own records decide, e.g. consent
        given at the till); ``applied`` whether that store has recorded it yet (its task is
        done). The service keeps no consent registry: the stores do.
        """
        from siloguard.policies.consent import SALE_AND_SHARING

        purposes = (*consent_purposes(), *SALE_AND_SHARING)
        digest = self.digest(customer_ref)  # type: ignore[attr-defined]
        with self.reads.connect() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(_ASKED, {"digest": digest}).mappings().all()
        state: dict[str, dict[str, tuple[bool, bool]]] = {}
        for row in rows:
            asked = self._effect_events(dict(row))
            if row["gpc"]:
                asked += [{"purpose": p, "event": "opt_out"} for p in SALE_AND_SHARING]
            for event in asked:
                state.setdefault(row["store"], {})[event["purpose"]] = (event["event"] == "grant", row["status"] == "done")
        stores = sorted(set(self._stores()) | set(state))  # type: ignore[attr-defined]
        out = []
        for store in stores:
            mine = state.get(store, {})
            out.append((store, [(p, mine[p][0], mine[p][1]) if p in mine else (p, None, True) for p in purposes]))
        return out

    # ---- the access answer ----------------------------------------------------------------------
    def answer_read(self, request_id: str, *, actor: str) -> None:
        """Audit a read of an access answer by staff (the DPO): the subject's data was seen."""
        from siloguard.audit.vocabulary import DSR_ANSWER_READ
        from siloguard.dsr.common import PURPOSE

        self.audit.append([AuditEvent(actor=actor, action=DSR_ANSWER_READ, resource="dsr:access", purpose=PURPOSE,  # type: ignore[attr-defined]
                                      decision="info", reason="answer-read", request=request_id)])

    def take_answer(self, request_id: str) -> dict[str, Any] | None:
        """The subject's download: the stored answer, deleted in the same transaction (download
        once; of two concurrent downloads one gets it, the other None)."""
        with exclusive(self.engine, LOCK) as conn:
            row = conn.execute(
                sa.select(dsr_requests.c.result).where(dsr_requests.c.id == request_id, dsr_requests.c.kind == "access")
            ).first()
            if row is None or not row.result:
                return None
            answer = json.loads(row.result)
            if answer.get("answer_deleted") or answer.get("erased"):
                return None
            conn.execute(
                dsr_requests.update().where(dsr_requests.c.id == request_id)
                .values(result=ANSWER_DELETED, payload=json.dumps({"consent": []}))
            )
        return answer

    def purge_answers(self) -> int:
        """Delete access answers older than ``api.answer_ttl_days``; returns how many."""
        cutoff = self.clock() - timedelta(days=self.settings.api.answer_ttl_days)  # type: ignore[attr-defined]
        with exclusive(self.engine, LOCK) as conn:
            return int(conn.execute(
                dsr_requests.update()
                .where(dsr_requests.c.kind == "access", dsr_requests.c.status == "completed",
                       dsr_requests.c.updated_at < cutoff, dsr_requests.c.result.is_not(None),
                       dsr_requests.c.result != ANSWER_DELETED)
                .values(result=ANSWER_DELETED)
            ).rowcount or 0)
