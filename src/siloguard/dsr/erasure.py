"""The erasure task queue: one task per store, claims, signed receipts, and what completing an
erasure destroys in the service (:class:`ErasureTasks`, a part of
:class:`~siloguard.dsr.service.DsrService`).

Stores pull their tasks, claim one right before erasing (no denial while the claim holds),
and post a receipt signed with their registered key; every refused receipt is audited. The
last receipt completes the request and :meth:`ErasureTasks._forget_subject` destroys every
copy of the subject the service holds.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from siloguard.audit import AuditEvent, new_event_id
from siloguard.audit.vocabulary import DSR_RECEIPT
from siloguard.dsr.common import LOCK, PURPOSE, SYSTEM
from siloguard.dsr.errors import DsrConflict, DsrInvalid, DsrNotFound
from siloguard.dsr.machine import ACTIVE, TERMINAL
from siloguard.dsr.receipts import Receipt, receipt_summary, verify_receipt
from siloguard.errors import SiloguardError
from siloguard.storage.db import exclusive
from siloguard.storage.orm import (
    dsr_outbox,
    dsr_requests,
    dsr_sessions,
    dsr_tasks,
    dsr_verifications,
    store_signing_keys,
)

__all__ = ["ErasureTasks", "checkpoint"]

log = logging.getLogger(__name__)


class ErasureTasks:
    """Erasure tasks and receipts; mixed into DsrService (its engine, clock, audit, transitions)."""

    engine: Engine
    _work_lock: Any

    def _start_erasure(self, request: dict[str, Any]) -> bool:
        """One erasure task per store (each store forgets the subject's consent as it erases)."""
        stores = self._stores()
        if not stores:
            return self._move(request["id"], "failed", reason="no-stores", result={"error": "no stores are enrolled"})
        now = self.clock()
        try:
            events: list[AuditEvent] = []
            with exclusive(self.engine, LOCK) as conn:
                current = self._load(conn, request["id"])
                if current["status"] != "verified":
                    return False
                held = set(conn.execute(sa.select(dsr_tasks.c.store).where(dsr_tasks.c.request_id == request["id"])).scalars())
                rows = [
                    {"id": f"task-{uuid.uuid4()}", "request_id": request["id"], "store": store, "status": "pending",
                     "customer_ref": current["customer_ref"], "created_at": now, "kind": "erasure"}
                    for store in stores if store not in held
                ]
                if rows:
                    conn.execute(dsr_tasks.insert(), rows)
                self._transition(conn, current, "in_progress", events=events, actor=SYSTEM, reason="tasks-created", now=now)
        except DsrConflict:
            return False
        self._append(events)
        return True

    def pending_tasks(self, store: str) -> list[dict[str, Any]]:
        """A store's tasks still to do (erasure, effects, access; claimed ones too: the store's own)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dsr_tasks.c.id, dsr_tasks.c.request_id, dsr_tasks.c.store, dsr_tasks.c.customer_ref,
                          dsr_tasks.c.created_at, dsr_tasks.c.kind, dsr_tasks.c.payload)
                .where(dsr_tasks.c.store == store, dsr_tasks.c.status.in_(["pending", "claimed"]),
                       dsr_tasks.c.customer_ref.is_not(None))
                .order_by(dsr_tasks.c.created_at, dsr_tasks.c.id)
            ).mappings()
            return [dict(r) | {"payload": json.loads(r["payload"]) if r["payload"] else {}} for r in rows]

    def tasks(self, request_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dsr_tasks).where(dsr_tasks.c.request_id == request_id).order_by(dsr_tasks.c.store))
            return [dict(r) for r in rows.mappings()]

    @staticmethod
    def _task(conn: Connection, store: str, task_id: str) -> dict[str, Any]:
        """A store's task with its effective status: a pending or claimed task of a request that
        ended (or names no subject any more) is ``cancelled``."""
        row = conn.execute(
            sa.select(dsr_tasks.c.id, dsr_tasks.c.request_id, dsr_tasks.c.store, dsr_tasks.c.status, dsr_tasks.c.customer_ref,
                      dsr_requests.c.status.label("request_status"))
            .join(dsr_requests, dsr_requests.c.id == dsr_tasks.c.request_id)
            .where(dsr_tasks.c.id == task_id, dsr_tasks.c.store == store)
        ).mappings().first()
        if row is None:
            raise DsrNotFound("no such task for this store; pull the store's tasks again")
        out = dict(row)
        if out["status"] in ("pending", "claimed") and (out["request_status"] in TERMINAL or out["customer_ref"] is None):
            out["status"] = "cancelled"
        return out

    def task_status(self, store: str, task_id: str) -> dict[str, Any]:
        """A store's task and whether its work may go on (``claimed``/``pending``: erase after claiming)."""
        with self.engine.connect() as conn:
            return self._task(conn, store, task_id)

    def claim_task(self, store: str, task_id: str) -> dict[str, Any]:
        """A store is about to erase: claim its task for ``api.claim_lease_seconds`` if still live.

        Returns the task with ``status`` ``claimed`` (erase now), or ``cancelled``/``done``
        (erase nothing). While the claim holds the request cannot be denied.
        """
        now = self.clock()
        with exclusive(self.engine, LOCK) as conn:
            out = self._task(conn, store, task_id)
            if out["status"] in ("pending", "claimed"):
                # The lease runs from the first claim: claiming again does not extend it, so a
                # store cannot hold off a denial for longer than api.claim_lease_seconds.
                conn.execute(
                    dsr_tasks.update().where(dsr_tasks.c.id == task_id, dsr_tasks.c.claimed_until.is_(None))
                    .values(claimed_until=now + timedelta(seconds=self.settings.api.claim_lease_seconds))
                )
                conn.execute(dsr_tasks.update().where(dsr_tasks.c.id == task_id).values(status="claimed"))
                out["status"] = "claimed"
        return out

    def registered_key(self, store: str) -> bytes:
        """The store's registered receipt public key (a store checks it before erasing)."""
        with self.engine.connect() as conn:
            key = conn.execute(sa.select(store_signing_keys.c.public_key).where(store_signing_keys.c.store == store)).scalar()
        if key is None:
            raise DsrNotFound(
                f"store {store!r} has no registered receipt key; register it with "
                f"`siloguard keys create --role store_operator --store {store}` on a machine holding the store's keys"
            )
        return bytes(key)

    def post_receipt(self, store: str, task_id: str, receipt_text: str, signature: bytes, *, actor: str) -> dict[str, Any]:
        """Accept a store's signed receipt for its task; completes the request with the last one.

        A refused receipt is audited (``dsr.receipt``, decision ``deny``, with the reason code),
        so a store that erased data and was refused leaves a trace.
        """
        now = self.clock()
        request_id: str | None = None
        try:
            with exclusive(self.engine, LOCK) as conn:
                task = conn.execute(sa.select(dsr_tasks).where(dsr_tasks.c.id == task_id, dsr_tasks.c.store == store)).mappings().first()
                if task is None:
                    raise _Refusal("unknown-task", DsrNotFound("no such task for this store; pull the store's tasks again"))
                request_id = task["request_id"]
                if task["kind"] != "erasure":
                    raise _Refusal("not-an-erasure", DsrConflict("only an erasure task takes a receipt; this one is finished with POST .../done"))
                if task["status"] == "done":
                    raise _Refusal("duplicate-receipt", DsrConflict("this task has a receipt already"))
                status = conn.execute(sa.select(dsr_requests.c.status).where(dsr_requests.c.id == request_id)).scalar()
                if task["status"] not in ("pending", "claimed") or status in TERMINAL:
                    raise _Refusal("request-closed", DsrConflict(
                        f"the request is {status} and its task {task['status']}: no receipt is accepted for it"
                    ))
                key = conn.execute(sa.select(store_signing_keys.c.public_key).where(store_signing_keys.c.store == store)).scalar()
                if key is None:
                    raise _Refusal("no-receipt-key", DsrConflict(
                        f"store {store!r} has no registered receipt key; register it with "
                        f"`siloguard keys create --role store_operator --store {store}`"
                    ))
                try:
                    receipt = verify_receipt(bytes(key), receipt_text, signature)
                except DsrInvalid as exc:
                    raise _Refusal("bad-signature" if "signature" in str(exc) else "malformed", exc) from None
                if (receipt.task, receipt.request, receipt.store) != (task_id, task["request_id"], store):
                    raise _Refusal("wrong-task", DsrInvalid("the receipt names another task, request or store"))
                if receipt.rows_remaining != 0:
                    raise _Refusal("rows-remaining", DsrInvalid("the receipt reports rows remaining: erase them and post a new receipt"))
                if not receipt.key_destroyed and receipt.rows_erased > 0:
                    raise _Refusal("key-surviving", DsrInvalid("the receipt reports erased rows but a surviving data key: destroy the key"))
                event_id = new_event_id()
                conn.execute(
                    dsr_tasks.update().where(dsr_tasks.c.id == task_id).values(
                        status="done", done_at=now, receipt=receipt_text, signature=signature, customer_ref=None,
                        receipt_event_id=event_id,
                    )
                )
        except _Refusal as refusal:
            self._append([_refused_event(store, request_id, refusal.code, actor=actor, at=now)])
            raise refusal.error from None
        self._append([self._receipt_event(receipt, actor=actor, event_id=event_id, at=now)])
        self._maybe_complete_erasure(request_id)
        return self.get(request_id)

    def refuse_receipt(self, store: str, task_id: str, code: str, *, actor: str) -> None:
        """Audit a receipt refused before it reached :meth:`post_receipt` (e.g. a signature that is not base64)."""
        with self.engine.connect() as conn:
            request_id = conn.execute(
                sa.select(dsr_tasks.c.request_id).where(dsr_tasks.c.id == task_id, dsr_tasks.c.store == store)
            ).scalar()
        self._append([_refused_event(store, request_id, code, actor=actor, at=self.clock())])

    @staticmethod
    def _receipt_event(receipt: Receipt, *, actor: str, event_id: str, at: datetime) -> AuditEvent:
        return AuditEvent(
            actor=actor, action=DSR_RECEIPT, resource="dsr:erasure", purpose=PURPOSE, decision="info",
            reason="receipt-verified", store=receipt.store, request=receipt.request,
            counts={"rows_erased": receipt.rows_erased, "rows_remaining": receipt.rows_remaining,
                    "embeddings_erased": receipt.embeddings_erased, "keys_destroyed": int(receipt.key_destroyed)},
            event_id=event_id, time=at,  # type: ignore[arg-type]
        )

    def _maybe_complete_erasure(self, request_id: str) -> bool:
        # Under the work lock: no access answer of this subject is being built in this process
        # while its copies are destroyed (other processes: see _move's check).
        with self._work_lock:
            return self._complete_erasure(request_id)

    def _complete_erasure(self, request_id: str) -> bool:
        tasks = self.tasks(request_id)
        if not tasks or any(t["status"] != "done" for t in tasks):
            return False
        erased = [receipt_summary(Receipt.parse(t["receipt"])) for t in tasks]
        result = {
            "erased": erased,
            "stores": len(erased),
            "rows_erased": sum(e["rows_erased"] for e in erased),
            "dp_bound": self._dp_bound(),
        }
        now = self.clock()
        try:
            events: list[AuditEvent] = []
            with exclusive(self.engine, LOCK) as conn:
                request = self._load(conn, request_id)
                if request["status"] in TERMINAL:
                    return False
                self._transition(
                    conn, request, "completed", events=events, actor=SYSTEM, reason="all-receipts-verified", now=now,
                    result=json.dumps(result, sort_keys=True), customer_ref=None, contact=None,
                )
                self._forget_subject(conn, request["subject_digest"], events=events, now=now, by=request_id)
        except DsrConflict:
            return False
        self._append(events)
        checkpoint(self.engine)
        return True

    def _forget_subject(self, conn: Connection, digest: str, *, events: list[AuditEvent], now: datetime, by: str) -> None:
        """An erasure completed: destroy every copy of the subject this service holds.

        The subject's other open requests end (another erasure ``completed``, ``verifying`` ->
        ``unverified``, the rest ``failed``, reason ``subject-erased``; their pending tasks are
        cancelled). Every request
        of the subject loses its answer, consent changes, reference, contact and idempotency
        key; outbox messages and codes go. The requests themselves stay (ids, kinds, statuses
        and dates: what the controller must be able to show it did), under a random digest
        that no key links back to the customer; the subject's tokens move with them, so the
        subject can still read the outcome. What remains about the person is the stores' keyed
        suppression record.
        """
        open_rows = conn.execute(
            sa.select(dsr_requests).where(dsr_requests.c.subject_digest == digest, dsr_requests.c.status.in_(sorted(ACTIVE)))
        ).mappings().all()
        for row in open_rows:
            other = dict(row)
            if other["kind"] == "erasure" and other["status"] in ("in_progress", "extended"):
                # another erasure of the same subject: done by this one
                self._transition(conn, other, "completed", events=events, actor=SYSTEM, reason="subject-erased", now=now,
                                 result=json.dumps({"erased_by": by}))
                continue
            to = {"received": "denied", "verifying": "unverified"}.get(other["status"], "failed")
            self._transition(conn, other, to, events=events, actor=SYSTEM, reason="subject-erased", now=now)
        tombstone = "e" + secrets.token_hex(31)  # the form of a digest, the value of nothing
        ids = conn.execute(sa.select(dsr_requests.c.id, dsr_requests.c.kind).where(dsr_requests.c.subject_digest == digest)).all()
        request_ids = [i for i, _ in ids]
        if request_ids:
            conn.execute(dsr_verifications.delete().where(dsr_verifications.c.request_id.in_(request_ids)))
            conn.execute(dsr_outbox.delete().where(dsr_outbox.c.request_id.in_(request_ids)))
            conn.execute(dsr_tasks.update().where(dsr_tasks.c.request_id.in_(request_ids)).values(customer_ref=None, answer=None))
            others = [i for i, kind in ids if kind != "erasure"]
            if others:
                conn.execute(
                    dsr_requests.update().where(dsr_requests.c.id.in_(others))
                    .values(result=json.dumps({"erased": True}), payload=json.dumps({"consent": []}))
                )
            conn.execute(
                dsr_requests.update().where(dsr_requests.c.id.in_(request_ids))
                .values(subject_digest=tombstone, customer_ref=None, contact=None, idempotency_key=None)
            )
        conn.execute(dsr_sessions.update().where(dsr_sessions.c.subject_digest == digest).values(subject_digest=tombstone, customer_ref=""))

    def erasing(self, digest: str) -> bool:
        """Whether an erasure of this subject is under way (verified, not yet ended)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(dsr_requests.c.id).where(
                    dsr_requests.c.subject_digest == digest, dsr_requests.c.kind == "erasure",
                    dsr_requests.c.status.in_(["verified", "in_progress", "extended"]),
                ).limit(1)
            ).first() is not None

    def _dp_bound(self) -> dict[str, Any]:
        """The DP guarantee covering models trained before the erasure, per store."""
        from siloguard.privacy.budget import BudgetLedger

        try:
            entries = BudgetLedger(self.engine).entries()
        except SiloguardError:
            entries = []
        per_store = {e.store: {"epsilon": round(e.epsilon, 4), "delta": e.delta, "epsilon_cap": e.epsilon_cap} for e in entries}
        return {
            "unit": "customer",
            "per_store": per_store,
            "statement": (
                "Models trained before this erasure may still reflect this customer's data, but only within "
                "customer-level (epsilon, delta)-differential privacy per store: no output changes in probability "
                "by more than a factor of e^epsilon (plus delta) whether or not the customer's data was used. "
                "Later training rounds exclude the customer from the moment of verification."
                if per_store
                else "No store has trained with differential privacy on record; models trained before this "
                "erasure carry no recorded DP bound. Later training rounds exclude the customer."
            ),
        }


def _refused_event(store: str, request_id: str | None, code: str, *, actor: str, at: datetime) -> AuditEvent:
    """The audit event of a refused receipt (``dsr.receipt``, decision ``deny``, the reason code)."""
    return AuditEvent(actor=actor, action=DSR_RECEIPT, resource="dsr:erasure", purpose=PURPOSE, decision="deny",
                      reason=f"receipt-refused:{code}", store=store, request=request_id, time=at)


class _Refusal(Exception):
    """A refused receipt: its reason code for the audit log, and the error for the caller."""

    def __init__(self, code: str, error: Exception) -> None:
        super().__init__(code)
        self.code, self.error = code, error


def checkpoint(engine: Engine) -> None:
    """SQLite: move the write-ahead log into the database file and empty it, so the erased
    rows' old page images do not linger in ``-wal`` (the file itself zeroes deleted rows:
    ``PRAGMA secure_delete``). Best effort: a busy reader delays it to the next checkpoint."""
    if engine.dialect.name != "sqlite":
        return
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    except Exception as exc:  # noqa: BLE001  the erasure itself is complete; the next checkpoint does it
        log.info("wal checkpoint after an erasure deferred (%s)", type(exc).__name__)
