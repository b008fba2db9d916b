"""Data-subject requests: intake, verification, processing, erasure tasks and receipts.

:class:`DsrService` is the one place that changes ``dsr_*`` rows; the API and the CLI call
it. Each change of status is a compare-and-set inside one serialised transaction
(:func:`siloguard.storage.db.exclusive`) that also writes a ``dsr_transitions`` row carrying
the id of its audit event. The audit events are appended right after the commit;
:meth:`DsrService.flush_audit` appends those a crash left behind (transitions whose event id
is not in ``audit_events``). So a server killed at any point loses no request and no audit
event, and :meth:`DsrService.resume` (run at start-up and periodically) carries every active
request forward.

Side effects outside the request tables (consent events, the access answer) are idempotent:
repeating them after a crash changes nothing that matters.

Subjects are identified by a customer reference (the store's customer id). Requests store a
keyed digest of it for look-ups; the reference and contact only while work needs them
(cleared when the request ends). A subject proves the reference with a one-time code sent by
the :class:`~siloguard.dsr.notifier.Notifier`; verifying returns a bearer token for that
subject.

What the service keeps about a subject, and until when (docs/API.md, "What is kept"):

* a request ending (completed, denied, failed, unverified) clears its customer reference and
  contact, its one-time code and its outbox messages, and cancels its open erasure tasks;
* an access answer is kept for ``api.answer_ttl_days`` after completion, then deleted;
* an erasure completing destroys every copy of the subject the service holds: the earlier
  requests' answers, references, contacts and idempotency keys are deleted, and their digest
  (and the subject's tokens) move to a random value that nothing links back to the customer.
  What remains about the person is the stores' keyed suppression record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from siloguard.audit import AuditEvent, AuditLog, new_event_id
from siloguard.config import Settings
from siloguard.dsr import clocks
from siloguard.dsr.errors import DsrConflict, DsrInvalid, DsrNotFound, DsrUnauthorized
from siloguard.dsr.machine import ACTIVE, TERMINAL, allowed
from siloguard.dsr.notifier import Notifier, OutboxNotifier
from siloguard.dsr.receipts import Receipt
from siloguard.errors import AuditError, SiloguardError
from siloguard.storage.db import exclusive, reads
from siloguard.storage.orm import (
    dsr_outbox,
    dsr_requests,
    dsr_sessions,
    dsr_tasks,
    dsr_transitions,
    dsr_verifications,
)

__all__ = ["ANONYMOUS", "CONSENT_KINDS", "DsrService", "SubjectSession", "consent_purposes", "normalise_ref"]

log = logging.getLogger(__name__)

from siloguard.dsr.common import (  # noqa: E402  (re-exported: the service's public names)
    ANONYMOUS,
    CODE_DIGITS as _CODE_DIGITS,
    CONSENT_KINDS,
    EMAIL as _EMAIL,
    LOCK as _LOCK,
    PURPOSE,
    SUBJECT_ACTOR,
    SYSTEM,
    aware as _aware,
    consent_purposes,
    normalise_ref,
    now as _now,
)
from siloguard.dsr.effects import StoreEffects  # noqa: E402
from siloguard.dsr.erasure import ErasureTasks  # noqa: E402


@dataclass(frozen=True)
class SubjectSession:
    """A verified data subject: the digest names them, ``customer_ref`` until erased."""

    digest: str
    customer_ref: str | None

    @property
    def principal(self) -> str:
        return subject_principal(self.digest)


def subject_principal(digest: str) -> str:
    """The Casbin principal of a subject: from the digest, so no customer id reaches policy."""
    return f"subject:d.{digest[:40]}"




def _make_cursor(due: datetime, received: datetime, request_id: str) -> str:
    text = json.dumps([due.isoformat(), received.isoformat(), request_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[datetime, datetime, str]:
    try:
        due, received, request_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when, then = datetime.fromisoformat(due), datetime.fromisoformat(received)
        if not isinstance(request_id, str) or when.tzinfo is None or then.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, OverflowError, binascii.Error):
        # 404, not 422: the parameter is well formed, the page it names does not exist
        raise DsrNotFound("no such page: this cursor was not handed out by this API; start again without it") from None
    try:
        return when.astimezone(timezone.utc), then.astimezone(timezone.utc), request_id
    except OverflowError:  # an offset that moves the time out of range
        raise DsrNotFound("no such page: this cursor was not handed out by this API; start again without it") from None


def _resource(kind: str) -> str:
    return "dsr:" + kind.replace("_", "-")


class DsrService(ErasureTasks, StoreEffects):
    """Data-subject requests in one database. Thread-safe; one per process.

    The request lifecycle lives here (intake, verification, decisions, the sweep); the
    erasure task queue and receipts in :class:`~siloguard.dsr.erasure.ErasureTasks`; consent,
    GPC and access as tasks the stores do on their sites in
    :class:`~siloguard.dsr.effects.StoreEffects`. The service holds no store key.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        audit: AuditLog,
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = _now,
        stores: Callable[[], list[str]] | None = None,
        jurisdictions: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.reads = reads(engine)  # one-statement reads: no BEGIN/ROLLBACK round trips
        self.audit = audit
        self.notifier = notifier or OutboxNotifier()
        self.clock = clock
        run_stores = _RunStores(settings)
        self._stores = stores or run_stores
        self._jurisdictions = jurisdictions or run_stores.jurisdictions
        self._writer = _GroupWriter(self)
        self._digest_key = _service_secret(settings)
        self._audit_lock = threading.Lock()
        # One request moves forward at a time in this process: the sweep thread and a
        # request thread never run the same side effects (or the gate's models) at once.
        self._work_lock = threading.RLock()
        self.code_ttl = timedelta(seconds=settings.api.code_ttl_seconds)
        self.session_ttl = timedelta(seconds=settings.api.session_ttl_seconds)
        self.max_attempts = settings.api.code_attempts

    # ---- identity -------------------------------------------------------------------------

    def digest(self, customer_ref: str) -> str:
        return hmac.digest(self._digest_key, b"subject\0" + customer_ref.encode(), "sha256").hex()

    def _idempotency(self, scope: str, key: str, body: dict[str, Any]) -> str:
        """The stored form of an Idempotency-Key: keyed, and scoped to who sent it.

        A caller with a credential replays only its own submissions (``scope`` is its
        principal). A caller without one replays only a submission with exactly the same body
        (keyed with the service secret, so the stored value reveals neither the key nor the
        body): knowing a customer number and a guessed key returns nothing of anyone else's.
        """
        bound = json.dumps(body, sort_keys=True, separators=(",", ":")) if scope == ANONYMOUS else ""
        return hmac.digest(self._digest_key, f"idem\0{scope}\0{key}\0{bound}".encode(), "sha256").hex()

    def jurisdiction(self) -> str:
        """The law a request follows: where the stores holding the subject operate, never the caller.

        The service does not read store data, so it cannot tell which stores hold a customer:
        a request follows GDPR if any store of the federation does (the stricter clock, and
        identity is verified), and CCPA only when every store operates under it.
        """
        declared = set(self._jurisdictions().values())
        if not declared:
            return self.settings.api.default_jurisdiction
        return "ccpa" if declared == {"ccpa"} else "gdpr"

    def _code_hash(self, request_id: str, code: str) -> bytes:
        return hmac.digest(self._digest_key, f"code\0{request_id}\0{code}".encode(), "sha256")

    @staticmethod
    def _token_hash(token: str) -> bytes:
        # Tokens are 256 random bits: a fast hash is enough (no dictionary to search).
        return hashlib.sha256(token.encode()).digest()

    def session(self, token: str) -> SubjectSession | None:
        """The subject a bearer token belongs to, if it is known and not expired."""
        with self.reads.connect() as conn:
            row = conn.execute(_SESSION, {"token_hash": self._token_hash(token)}).mappings().first()
        if row is None or _aware(row["expires_at"]) <= self.clock():
            return None
        return SubjectSession(row["subject_digest"], row["customer_ref"] or None)

    # ---- transitions -----------------------------------------------------------------------

    def _transition(
        self, conn: Connection, request: dict[str, Any], to: str, *, actor: str, reason: str | None, now: datetime,
        events: list[AuditEvent], **values: Any,
    ) -> None:
        current = request["status"]
        if not allowed(current, to):
            raise DsrConflict(f"request is {current}; it cannot become {to}")
        done = conn.execute(
            dsr_requests.update()
            .where(dsr_requests.c.id == request["id"], dsr_requests.c.status == current)
            .values(status=to, updated_at=now, **values)
        ).rowcount
        if done != 1:
            raise DsrConflict(f"request changed while being updated (it is no longer {current}); retry")
        row = {"request_id": request["id"], "from_status": current, "to_status": to, "at": now, "actor": actor,
               "reason": reason, "event_id": new_event_id()}
        conn.execute(dsr_transitions.insert(), row)
        if to in TERMINAL:
            values.update(self._close(conn, request["id"]))
        events.append(self._event({**row, "kind": request["kind"], "jurisdiction": request["jurisdiction"],
                                   "due_at": values.get("due_at")}))
        request["status"] = to
        request.update(values)

    @staticmethod
    def _close(conn: Connection, request_id: str) -> dict[str, Any]:
        """A request ended: drop what only its work needed; returns the row values cleared.

        Its customer reference and contact, its one-time code and outbox messages (which
        name the customer and carry the code), and its erasure tasks still pending (a denied
        or failed erasure must not go on in the stores: they check a task is live first).
        """
        conn.execute(dsr_verifications.delete().where(dsr_verifications.c.request_id == request_id))
        conn.execute(dsr_outbox.delete().where(dsr_outbox.c.request_id == request_id))
        conn.execute(
            dsr_tasks.update()
            .where(dsr_tasks.c.request_id == request_id, dsr_tasks.c.status.in_(["pending", "claimed"]))
            .values(status="cancelled", customer_ref=None)
        )
        # The stores' parts of an answer live on in the request's result only (or not at all).
        conn.execute(dsr_tasks.update().where(dsr_tasks.c.request_id == request_id).values(answer=None))
        cleared = {"customer_ref": None, "contact": None}
        conn.execute(dsr_requests.update().where(dsr_requests.c.id == request_id).values(**cleared))
        return cleared

    def _load(self, conn: Connection, request_id: str) -> dict[str, Any]:
        row = conn.execute(sa.select(dsr_requests).where(dsr_requests.c.id == request_id)).mappings().first()
        if row is None:
            raise DsrNotFound("no such request; check the request id")
        return dict(row)

    def _append(self, events: list[AuditEvent]) -> None:
        """Append the events of a committed change; a failure is left to :meth:`flush_audit`."""
        if not events:
            return
        try:
            self.audit.append(events)
        except AuditError:
            self.flush_audit()  # some were appended already (a retry): append the rest
        except SiloguardError as exc:
            log.warning("dsr audit events not appended yet (%s); the next sweep appends them", type(exc).__name__)

    def flush_audit(self) -> int:
        """Append the audit events of transitions not in the log yet; returns how many."""
        from siloguard.storage.orm import AuditEventRow

        audited = sa.select(AuditEventRow.event_id).where(AuditEventRow.event_id == dsr_transitions.c.event_id)
        with self._audit_lock:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(dsr_transitions, dsr_requests.c.kind, dsr_requests.c.jurisdiction, dsr_requests.c.due_at)
                    .join(dsr_requests, dsr_requests.c.id == dsr_transitions.c.request_id)
                    .where(~audited.exists())
                    .order_by(dsr_transitions.c.id)
                ).mappings().all()
            events = [self._event(r) for r in rows]
            receipted = sa.select(AuditEventRow.event_id).where(AuditEventRow.event_id == dsr_tasks.c.receipt_event_id)
            with self.engine.connect() as conn:
                tasks = conn.execute(
                    sa.select(dsr_tasks.c.receipt, dsr_tasks.c.receipt_event_id, dsr_tasks.c.done_at)
                    .where(dsr_tasks.c.receipt_event_id.is_not(None), ~receipted.exists())
                ).all()
            events += [
                self._receipt_event(Receipt.parse(t.receipt), actor=f"store:{Receipt.parse(t.receipt).store}",
                                    event_id=t.receipt_event_id, at=_aware(t.done_at))  # type: ignore[arg-type]
                for t in tasks
            ]
            for event in events:
                try:
                    self.audit.append([event])
                except AuditError:
                    log.info("dsr audit event appended meanwhile")
            return len(events)

    @staticmethod
    def _event(row: Any) -> AuditEvent:
        """The audit event of a transition row (ids, statuses and reason codes only)."""
        to = row["to_status"]
        reason = row["jurisdiction"] if to == "received" else row["reason"]
        # The deadline the API gives, so that the officer's report shows the same one: the
        # original at receipt (the legal clock), the new one at an extension.
        counts: dict[str, int] = {}
        if to == "received":
            due = clocks.clock_for(row["jurisdiction"], row["kind"], _aware(row["at"])).due_at  # type: ignore[arg-type]
            counts = {"due_epoch_s": int(due.timestamp())}
        elif to == "extended" and row.get("due_at") is not None:
            counts = {"due_epoch_s": int(_aware(row["due_at"]).timestamp())}  # type: ignore[union-attr]
        return AuditEvent(
            actor=row["actor"],
            action=f"dsr.{to}",
            resource=_resource(row["kind"]),
            purpose=PURPOSE,
            decision="deny" if to in ("denied", "failed") else "info",
            reason=reason,
            counts=counts,
            request=row["request_id"],
            event_id=row["event_id"],
            time=_aware(row["at"]),
        )

    # ---- intake ----------------------------------------------------------------------------

    def submit(
        self,
        *,
        kind: str,
        customer_ref: str,
        contact: str | None = None,
        idempotency_key: str | None = None,
        consent: list[dict[str, str]] | None = None,
        gpc: bool = False,
        actor: str = SUBJECT_ACTOR,
        scope: str = ANONYMOUS,
        answer_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a request (or return the caller's own with the same idempotency key): (row, created).

        ``scope`` names the caller for idempotency: its principal, or :data:`ANONYMOUS` (then
        the whole request must match too, see :meth:`_idempotency`). The jurisdiction is the
        federation's (:meth:`jurisdiction`). A GPC signal is recorded with the request's other
        effects, once the subject is verified: an unverified caller merely names a customer.
        """
        ref = normalise_ref(customer_ref)
        jur = self.jurisdiction()
        now = self.clock()
        clock = clocks.clock_for(jur, kind, now)
        if contact is not None and (len(contact) > 254 or not _EMAIL.fullmatch(contact)):
            raise DsrInvalid("contact must be an e-mail address where the verification code can be sent")
        changes = self._check_consent_changes(kind, consent)
        fingerprint = None
        if answer_key is not None:
            from siloguard.dsr.sealed import fingerprint as key_fingerprint
            from siloguard.dsr.sealed import public_key_from_text

            if kind != "access":
                raise DsrInvalid("answer_key goes with an access request (the answer is sealed to it)")
            fingerprint = key_fingerprint(public_key_from_text(answer_key))
        digest = self.digest(ref)
        idem = None
        if idempotency_key is not None:
            idem = self._idempotency(scope, idempotency_key, {"kind": kind, "customer_ref": ref, "contact": contact,
                                                             "consent": changes, "gpc": gpc, "answer_key": answer_key})
            existing = self._by_idempotency(digest, idem)
            if existing is not None and scope == ANONYMOUS and existing["status"] in TERMINAL:
                # The same anonymous request again after the first ended (e.g. its code
                # expired): file it anew rather than answer with a request that is over.
                with exclusive(self.engine, _LOCK) as conn:
                    conn.execute(dsr_requests.update().where(dsr_requests.c.id == existing["id"]).values(idempotency_key=None))
                existing = None
            if existing is not None:
                return self._check_same(existing, kind, jur), False
        row = self._new_row(kind, jur, clock, now, digest=digest, customer_ref=ref, contact=contact, idempotency_key=idem,
                            gpc=gpc, payload={"consent": changes} | ({"answer_key": answer_key} if answer_key else {}))
        request_id = row["id"]
        if clock.needs_verification:
            code = f"{secrets.randbelow(10**_CODE_DIGITS):0{_CODE_DIGITS}d}"
            expires = now + self.code_ttl
            verification = {"request_id": request_id, "code_hash": self._code_hash(request_id, code),
                            "expires_at": expires, "attempts": 0, "max_attempts": self.max_attempts}
            message = dict(
                # To the contact on file for this customer, never to an address the requester
                # typed: otherwise anyone could verify a request about someone else.
                request_id=request_id, destination=f"customer-ref:{ref}",
                body=f"Your siloguard verification code for request {request_id} is {code}. It expires at {expires.isoformat()}."
                + (f" The answer will be sealed to the key with fingerprint {fingerprint}: if that is not your key, "
                   "do not use the code." if fingerprint else ""),
                now=now, expires_at=expires,
            )
            new = self._new_request(row, "verifying", actor=actor, reason="code-sent", now=now,
                                    verification=verification, message=message)
        else:
            # Only a CCPA opt-out of sale/sharing goes ahead unverified (clocks.clock_for);
            # the audit log says so.
            new = self._new_request(row, "verified", actor=actor, reason="unverified-ccpa-opt-out", now=now)

        try:
            self._writer.run(new)
        except IntegrityError:
            existing = self._by_idempotency(digest, idem) if idem else None
            if existing is None:
                raise
            return self._check_same(existing, kind, jur), False
        row = new.request
        if row["status"] == "verified":
            self._try_advance(request_id)
            row = self.get(request_id)
        return row, True

    @staticmethod
    def _new_row(kind: str, jurisdiction: str, clock: Any, now: datetime, *, digest: str, customer_ref: str,
                 contact: str | None, idempotency_key: str | None, gpc: bool, payload: dict[str, Any]) -> dict[str, Any]:
        """A new request as it is stored (status ``received``), with its legal clock."""
        return {
            "id": f"dsr-{uuid.uuid4()}", "kind": kind, "jurisdiction": jurisdiction, "status": "received",
            "received_at": now, "due_at": clock.due_at, "ack_due_at": clock.ack_due_at,
            "extension_notice_by": clock.extension_notice_by, "extended": False, "subject_digest": digest,
            "customer_ref": customer_ref, "contact": contact, "idempotency_key": idempotency_key,
            "gpc": gpc, "payload": json.dumps(payload), "result": None, "updated_at": now,
        }

    def _new_request(self, row: dict[str, Any], to: str, *, actor: str, reason: str, now: datetime,
                     verification: dict[str, Any] | None = None, message: dict[str, Any] | None = None,
                     moved_by: str = SYSTEM) -> _NewRequest:
        """A new request (``row``, status ``received``) and its move to ``to`` as the rows to
        insert, with their audit events (the received transition, then the move as
        :meth:`_transition` records one), built before the writer's lock. ``message`` goes to
        the notifier (the outbox: a row of the batch too)."""
        if not allowed("received", to) or to in TERMINAL:
            raise DsrConflict(f"a new request cannot become {to}")
        received = {"request_id": row["id"], "from_status": None, "to_status": "received", "at": row["received_at"],
                    "actor": actor, "reason": row["jurisdiction"], "event_id": new_event_id()}
        moved = {"request_id": row["id"], "from_status": "received", "to_status": to, "at": now, "actor": moved_by,
                 "reason": reason, "event_id": new_event_id()}
        about = {"kind": row["kind"], "jurisdiction": row["jurisdiction"]}
        events = [self._event({**received, **about}), self._event({**moved, **about, "due_at": None})]
        outbox: dict[str, Any] | None = None
        notify: Callable[[Connection], None] | None = None
        if message is not None:
            if type(self.notifier) is OutboxNotifier:
                outbox = {k: message[k] for k in ("request_id", "destination", "body", "expires_at")} | {"created_at": message["now"]}
            else:
                notifier = self.notifier

                def send(conn: Connection) -> None:
                    notifier.send(conn, **message)

                notify = send
        return _NewRequest({**row, "status": to, "updated_at": now}, [received, moved], verification, outbox, notify, events)

    @staticmethod
    def original_clock(row: dict[str, Any]) -> dict[str, Any]:
        """A request's deadlines as first answered (before any extension)."""
        clock = clocks.clock_for(row["jurisdiction"], row["kind"], _aware(row["received_at"]))  # type: ignore[arg-type]
        return {"due_at": clock.due_at, "ack_due_at": clock.ack_due_at,
                "extension_notice_by": clock.extension_notice_by, "extended": False}

    def submitted_status(self, request_id: str) -> str:
        """The status a request's submission answered with (what a replay may show anonymously)."""
        with self.engine.connect() as conn:
            status = conn.execute(
                sa.select(dsr_transitions.c.to_status)
                .where(dsr_transitions.c.request_id == request_id, dsr_transitions.c.from_status == "received")
            ).scalar()
        return status or "received"

    def _by_idempotency(self, digest: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(dsr_requests).where(dsr_requests.c.subject_digest == digest, dsr_requests.c.idempotency_key == key)
            ).mappings().first()
        return dict(row) if row else None

    @staticmethod
    def _check_same(existing: dict[str, Any], kind: str, jurisdiction: str) -> dict[str, Any]:
        if existing["kind"] != kind or existing["jurisdiction"] != jurisdiction:
            raise DsrConflict("this idempotency key was used for a different request; use a new key")
        return existing

    def _check_consent_changes(self, kind: str, consent: list[dict[str, str]] | None) -> list[dict[str, str]]:
        if kind != "consent":
            if consent:
                raise DsrInvalid("consent changes belong to a request of type consent")
            return []
        if not consent:
            raise DsrInvalid("a consent request lists at least one change: [{purpose, action: grant|withdraw}]")
        from siloguard.policies.taxonomy import load_taxonomy

        taxonomy = load_taxonomy()
        out = []
        for change in consent:
            purpose, action = change.get("purpose"), change.get("action")
            if action not in CONSENT_KINDS:
                raise DsrInvalid(f"consent action must be one of {', '.join(CONSENT_KINDS)}")
            if not isinstance(purpose, str) or not taxonomy.is_use(purpose):
                raise DsrInvalid("consent purpose must be a fideslang data use (policies/taxonomy.yaml)")
            out.append({"purpose": purpose, "action": action})
        return out

    # ---- verification ----------------------------------------------------------------------

    def verify(self, request_id: str, code: str, *, answer_key: str | None = None) -> tuple[dict[str, Any], str]:
        """Check a one-time code; on success the request is verified and a subject token issued.

        ``answer_key`` (an access request only): the subject's P-256 public key; the answer is
        then sealed to it (:mod:`siloguard.dsr.sealed`) and the service never stores it in clear.
        """
        if answer_key is not None:
            from siloguard.dsr.sealed import public_key_from_text

            public_key_from_text(answer_key)  # refused before the code is spent
        now = self.clock()
        outcome: str
        token = secrets.token_urlsafe(32)
        events: list[AuditEvent] = []
        with exclusive(self.engine, _LOCK) as conn:
            request = self._load(conn, request_id)
            ver = conn.execute(
                sa.select(dsr_verifications).where(dsr_verifications.c.request_id == request_id)
            ).mappings().first()
            if request["status"] != "verifying" or ver is None:
                raise DsrConflict(f"request is {request['status']}, not waiting for a code")
            if answer_key is not None and request["kind"] != "access":
                raise DsrInvalid("answer_key goes with an access request (the answer is sealed to it)")
            bound = json.loads(request["payload"]).get("answer_key")
            if answer_key is not None and bound is not None and answer_key != bound:
                raise DsrInvalid("this request's answer is sealed to the key given when it was filed; verify without answer_key")
            attempts = ver["attempts"] + 1
            conn.execute(
                dsr_verifications.update().where(dsr_verifications.c.request_id == request_id).values(attempts=attempts)
            )
            good = hmac.compare_digest(ver["code_hash"], self._code_hash(request_id, str(code)))
            if _aware(ver["expires_at"]) <= now:
                outcome = "expired"
                self._transition(conn, request, "unverified", events=events, actor=SYSTEM, reason="code-expired", now=now)
            elif good:
                outcome = "ok"
                if answer_key is not None:
                    payload = json.loads(request["payload"]) | {"answer_key": answer_key}
                    conn.execute(dsr_requests.update().where(dsr_requests.c.id == request_id).values(payload=json.dumps(payload)))
                    request["payload"] = json.dumps(payload)
                self._transition(conn, request, "verified", events=events, actor=SUBJECT_ACTOR, reason="code-verified", now=now)
                conn.execute(dsr_verifications.delete().where(dsr_verifications.c.request_id == request_id))
                conn.execute(dsr_outbox.delete().where(dsr_outbox.c.request_id == request_id))  # the code is spent
                conn.execute(
                    dsr_sessions.insert().values(
                        token_hash=self._token_hash(token), subject_digest=request["subject_digest"],
                        customer_ref=request["customer_ref"], created_at=now, expires_at=now + self.session_ttl,
                    )
                )
            elif attempts >= ver["max_attempts"]:
                outcome = "exhausted"
                self._transition(conn, request, "denied", events=events, actor=SYSTEM, reason="verification-failed", now=now)
            else:
                outcome = "wrong"
        self._append(events)
        if outcome == "expired":
            raise DsrUnauthorized("the code expired; the request was closed: submit a new request")
        if outcome == "exhausted":
            raise DsrUnauthorized("too many wrong codes; the request was closed: submit a new request")
        if outcome == "wrong":
            raise DsrUnauthorized(f"wrong code; {ver['max_attempts'] - attempts} attempt(s) left")
        self._try_advance(request_id)
        return self.get(request_id), token

    # ---- reading ---------------------------------------------------------------------------

    def get(self, request_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return self._load(conn, request_id)

    def transitions(self, request_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dsr_transitions).where(dsr_transitions.c.request_id == request_id).order_by(dsr_transitions.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def list(self, *, subject_digest: str | None = None, due_within: timedelta | None = None, status: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Requests, soonest deadline first; ``due_within``: active ones due by now + that (overdue included)."""
        return self.page(subject_digest=subject_digest, due_within=due_within, status=status, limit=limit)[0]

    def page(
        self, *, subject_digest: str | None = None, due_within: timedelta | None = None, status: str | None = None,
        limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], int, str | None]:
        """One page of :meth:`list`: (rows, total matching, cursor of the next page or None).

        Keyset pagination on (due_at, received_at, id): a request filed while an officer pages
        through comes after the requests with the same deadline, so it is on a later page; one
        with an earlier deadline than the page reached (another clock) is counted in ``total``,
        never silently dropped.
        """
        conds = []
        if subject_digest is not None:
            conds.append(dsr_requests.c.subject_digest == subject_digest)
        if due_within is not None:
            conds += [dsr_requests.c.status.in_(sorted(ACTIVE)), dsr_requests.c.due_at <= self.clock() + due_within]
        if status is not None:
            conds.append(dsr_requests.c.status == status)
        t = dsr_requests
        query = sa.select(t).where(*conds).order_by(t.c.due_at, t.c.received_at, t.c.id).limit(limit + 1)
        if cursor is not None:
            due, received, last = _read_cursor(cursor)
            query = query.where(sa.or_(
                t.c.due_at > due,
                sa.and_(t.c.due_at == due, t.c.received_at > received),
                sa.and_(t.c.due_at == due, t.c.received_at == received, t.c.id > last),
            ))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
            total = int(conn.execute(sa.select(sa.func.count()).select_from(dsr_requests).where(*conds)).scalar_one())
        more = len(rows) > limit
        rows = rows[:limit]
        last_row = rows[-1] if more and rows else None
        following = None if last_row is None else _make_cursor(_aware(last_row["due_at"]), _aware(last_row["received_at"]), last_row["id"])  # type: ignore[arg-type]
        return rows, total, following

    # ---- officers' decisions ---------------------------------------------------------------

    def extend(self, request_id: str, *, reason: str, actor: str, explanation: str | None = None) -> dict[str, Any]:
        """Move the deadline once (GDPR +2 months, CCPA +45 days), announced before it passes."""
        now = self.clock()
        events: list[AuditEvent] = []
        with exclusive(self.engine, _LOCK) as conn:
            request = self._load(conn, request_id)
            clock = clocks.Clock(
                request["jurisdiction"], request["kind"], _aware(request["received_at"]), _aware(request["due_at"]),
                _aware(request["ack_due_at"]), _aware(request["extension_notice_by"]), True,
            )
            due = clocks.extended_due(clock, at=now, already_extended=request["extended"])
            if request["status"] != "in_progress":
                raise DsrConflict(f"request is {request['status']}; only a request in progress can be extended")
            self._transition(
                conn, request, "extended", events=events, actor=actor, reason=reason, now=now, due_at=due, extended=True,
                result=json.dumps({"extension": {"reason": reason, "new_due_at": due.isoformat()}
                                   | ({"explanation": explanation} if explanation else {})}),
            )
        self._append(events)
        return self.get(request_id)

    def deny(self, request_id: str, *, reason: str, actor: str, explanation: str | None = None) -> dict[str, Any]:
        """Refuse a request with reasons; refused while a store holds a claim on one of its tasks.

        A store that claimed a task is erasing now: denying under it would leave the data
        erased and the request denied. The DPO denies after the store's receipt (then the
        request is complete) or once the claim lapses (``api.claim_lease_seconds``).
        """
        now = self.clock()
        events: list[AuditEvent] = []
        with exclusive(self.engine, _LOCK) as conn:
            request = self._load(conn, request_id)
            done = conn.execute(
                sa.select(dsr_tasks.c.store).where(dsr_tasks.c.request_id == request_id, dsr_tasks.c.status == "done",
                                                   dsr_tasks.c.kind == "erasure")
            ).scalars().first()
            if done is not None:
                raise DsrConflict(
                    f"store {done!r} has already erased the subject for this request: it can no longer be denied; "
                    "let it complete"
                )
            claimed = conn.execute(
                sa.select(dsr_tasks.c.store, dsr_tasks.c.claimed_until)
                .where(dsr_tasks.c.request_id == request_id, dsr_tasks.c.status == "claimed")
            ).all()
            live = [(store, _aware(until)) for store, until in claimed if until is not None and _aware(until) > now]
            if live:
                store, until = live[0]
                raise DsrConflict(
                    f"store {store!r} is erasing for this request now (its claim holds until {until.isoformat()}): "
                    "deny after its receipt or once the claim lapses"
                )
            denial = {"denied": reason} | ({"explanation": explanation} if explanation else {})
            self._transition(conn, request, "denied", events=events, actor=actor, reason=reason, now=now, result=json.dumps(denial))
        self._append(events)
        return self.get(request_id)

    # ---- processing ------------------------------------------------------------------------

    def expire_unverified(self) -> int:
        """Close requests whose one-time code expired unused as ``unverified``; returns how many.

        Anyone can file a request naming any customer: one nobody verifies must not stay open
        (and overdue) for ever, nor keep the customer reference and the code's message.
        """
        now = self.clock()
        with self.engine.connect() as conn:
            ids = conn.execute(
                sa.select(dsr_requests.c.id)
                .join(dsr_verifications, dsr_verifications.c.request_id == dsr_requests.c.id)
                .where(dsr_requests.c.status == "verifying", dsr_verifications.c.expires_at <= now)
            ).scalars().all()
        closed = 0
        for request_id in ids:
            closed += self._move(request_id, "unverified", reason="code-expired")
        return closed

    def purge_sessions(self) -> int:
        """Delete expired subject tokens (with the customer reference they carry); returns how many."""
        with exclusive(self.engine, _LOCK) as conn:
            return int(conn.execute(dsr_sessions.delete().where(dsr_sessions.c.expires_at <= self.clock())).rowcount or 0)

    def resume(self) -> int:
        """Carry every active, verified request forward (start-up and periodic sweep).

        Also closes requests nobody verified in time and deletes access answers past their
        retention.
        """
        self.flush_audit()
        self.expire_unverified()
        self.purge_answers()
        self.purge_sessions()
        with self.engine.connect() as conn:
            ids = conn.execute(
                sa.select(dsr_requests.c.id).where(dsr_requests.c.status.in_(["verified", "in_progress", "extended"]))
            ).scalars().all()
        moved = 0
        for request_id in ids:
            try:
                moved += self.advance(request_id)
            except SiloguardError as exc:
                log.warning("request %s could not proceed yet: %s", request_id, exc)
            except Exception as exc:  # noqa: BLE001  one bad request must not stop the sweep for the others
                log.error("request %s could not proceed: %s", request_id, type(exc).__name__)
        return moved

    def _try_advance(self, request_id: str) -> None:
        """Start the work now if possible; if not (e.g. no prepared run yet), the sweep retries."""
        try:
            self.advance(request_id)
        except SiloguardError as exc:
            log.warning("request %s will proceed at the next sweep: %s", request_id, type(exc).__name__)

    def advance(self, request_id: str) -> bool:
        """Do the next step of a verified request; True if its status changed."""
        with self._work_lock:
            return self._advance(request_id)

    def _advance(self, request_id: str) -> bool:
        request = self.get(request_id)
        kind, status = request["kind"], request["status"]
        if status in TERMINAL or status in ("received", "verifying"):
            return False
        if status == "verified":
            if kind == "erasure":
                return self._start_erasure(request)
            return self._start_store_work(request)
        if kind == "erasure":
            return self._maybe_complete_erasure(request_id)
        return self._maybe_complete(request_id)

    def _move(self, request_id: str, to: str, *, reason: str, result: dict[str, Any] | None = None, actor: str = SYSTEM, **values: Any) -> bool:
        now = self.clock()
        try:
            events: list[AuditEvent] = []
            with exclusive(self.engine, _LOCK) as conn:
                request = self._load(conn, request_id)
                if request["status"] == to:
                    return False
                if result is not None and request["kind"] == "access" and request["customer_ref"] is None:
                    result = {"erased": True}  # the subject was erased while the answer was built
                if result is not None:
                    values["result"] = json.dumps(result, sort_keys=True)
                self._transition(conn, request, to, events=events, actor=actor, reason=reason, now=now, **values)
        except DsrConflict:
            return False  # another worker moved it first
        self._append(events)
        return True


#: A subject token's session, built once (see ``effects._ASKED``: a statement built per call costs
#: its construction and cache key on every API call).
_SESSION = sa.select(dsr_sessions).where(dsr_sessions.c.token_hash == sa.bindparam("token_hash"))


@dataclass(frozen=True)
class _NewRequest:
    """A new request as rows: the request at its first status after receipt, its two
    transitions, its code and its message (an outbox row, or ``notify`` for another notifier),
    and their audit events. The group writer inserts a batch's new requests together, one
    INSERT per table, so the time spent holding the writers' lock does not grow with the
    number of statements per request."""

    request: dict[str, Any]
    transitions: list[dict[str, Any]]
    verification: dict[str, Any] | None
    outbox: dict[str, Any] | None
    notify: Callable[[Connection], None] | None
    events: list[AuditEvent]

    @staticmethod
    def write_all(conn: Connection, news: list[_NewRequest]) -> None:
        conn.execute(dsr_requests.insert(), [n.request for n in news])
        conn.execute(dsr_transitions.insert(), [t for n in news for t in n.transitions])
        if codes := [n.verification for n in news if n.verification is not None]:
            conn.execute(dsr_verifications.insert(), codes)
        if messages := [n.outbox for n in news if n.outbox is not None]:
            conn.execute(dsr_outbox.insert(), messages)
        for n in news:
            if n.notify is not None:
                n.notify(conn)


class _Refused(Exception):
    """The audit log refused a batch's events (its transaction rolled back); the message is the
    refusal's type name."""


class _GroupWriter:
    """Writes many threads' new requests in shared transactions: one durable commit per batch.

    A SQLite commit with ``synchronous=FULL`` waits for the disk (milliseconds), and writes are
    serialised: one transaction per request would cap intake at a few hundred a second at
    best. New requests queued while a batch commits go into the next one, written with one
    INSERT per table (:meth:`_write`), and the batch's audit events are appended in the same
    transaction (``AuditLog.append_in``): one commit for both. Then every
    caller gets its outcome; a caller returns only after its request is durable.

    If the audit log refuses the events (a broken node store, a signing failure), the requests
    are committed without them and the events are appended after the commit as before
    (``DsrService._append``, else by the next sweep's ``flush_audit``: each transition row
    holds its event's id), and the refusal is logged for the operators: a data subject's
    request is not turned away because the audit log needs repair, the same as every other
    DSR step.
    """

    def __init__(self, service: DsrService, max_batch: int = 64) -> None:
        self._service = service
        self._max = max_batch
        self._queue: queue.SimpleQueue[tuple[_NewRequest, Future[None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, new: _NewRequest) -> None:
        """Write ``new`` in the next batch's transaction; raises what writing it raised."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="dsr-writer", daemon=True)
                self._thread.start()
        done: Future[None] = Future()
        self._queue.put((new, done))
        done.result()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            audit = self._service.audit
            # A batch holding a request whose notifier sends at once is committed without its events
            # (appended after the commit): a refusing log would roll it back and the retry would
            # send the same code twice.
            together = (isinstance(audit, AuditLog) and audit.url == self._service.engine.url
                        and all(new.notify is None for new, _ in batch))
            try:
                try:
                    outcomes, events = self._commit(batch, audit if together else None)  # type: ignore[arg-type]
                except _Refused as refused:
                    log.error("audit log refused the events of new requests (%s): the requests are kept and their "
                              "events appended later; run `siloguard audit verify`", refused)
                    together = False
                    outcomes, events = self._commit(batch, None)  # again, without the log
            except BaseException as exc:  # noqa: BLE001  nothing was committed: every caller fails
                for _, done in batch:
                    done.set_exception(exc)
                continue
            if not together:  # another sink or database, or the log refused: appended after the commit
                self._service._append(events)
            for (_, done), outcome in zip(batch, outcomes):
                if outcome is None:
                    done.set_result(None)
                else:
                    done.set_exception(outcome)

    def _commit(self, batch: list[tuple[_NewRequest, Future[None]]], audit: AuditLog | None) -> tuple[list[BaseException | None], list[AuditEvent]]:
        """One transaction: the batch's requests, and their events if ``audit`` is given.
        Raises :class:`_Refused` (nothing committed) if the log refused the events; the batch
        is then written again without them (no savepoint in the usual case: it would cost two
        statements under the lock for every batch)."""
        events: list[AuditEvent] = []
        with exclusive(self._service.engine, _LOCK) as conn:
            outcomes = self._write(conn, [new for new, _ in batch], events)
            if audit is not None:
                try:
                    audit.append_in(conn, events)
                except AuditError as exc:
                    raise _Refused(type(exc).__name__) from None  # leaves the block: rolled back
        return outcomes, events

    @staticmethod
    def _write(conn: Connection, news: list[_NewRequest], events: list[AuditEvent]) -> list[BaseException | None]:
        """Write a batch's new requests in ``conn``, adding their audit events to ``events``;
        returns each one's outcome (None: written).

        A request alone is written straight (if it fails, so does the transaction, which holds
        nothing else). Several go in one INSERT per table; if that fails (one repeats an
        idempotency key, say), each is written again in its own savepoint so that only the
        failing one is refused. Requests with another notifier than the outbox are written one
        by one from the start: their ``notify`` may send at once and must run once."""
        if len(news) == 1:
            _NewRequest.write_all(conn, news)
            events.extend(news[0].events)
            return [None]
        outcomes: list[BaseException | None] = [None] * len(news)
        together = [i for i, new in enumerate(news) if new.notify is None]
        done: set[int] = set()
        if len(together) > 1:
            try:
                with conn.begin_nested():
                    _NewRequest.write_all(conn, [news[i] for i in together])
            except Exception:  # noqa: BLE001  one by one below, each with its own outcome
                pass
            else:
                done = set(together)
                for i in together:
                    events.extend(news[i].events)
        for i, new in enumerate(news):
            if i in done:
                continue
            try:
                with conn.begin_nested():
                    _NewRequest.write_all(conn, [new])
                events.extend(new.events)
            except Exception as exc:  # noqa: BLE001  handed to its caller
                outcomes[i] = exc
        return outcomes


class _RunStores:
    """The prepared run's stores and their jurisdictions, re-read only when ``run.json`` changes.

    A store's law is a fact of where it operates: ``run.json`` may declare it per store
    (``"jurisdictions": {"store": "gdpr" | "ccpa"}``); a store without one follows
    ``api.default_jurisdiction``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._seen: tuple[float, list[str], dict[str, str]] | None = None

    def _read(self) -> tuple[list[str], dict[str, str]]:
        from siloguard.runs import run_manifest

        path = self.settings.work_dir / "run.json"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = -1.0
        if self._seen is None or self._seen[0] != mtime:
            run = run_manifest(self.settings.work_dir)
            stores = run.names
            default = self.settings.api.default_jurisdiction
            self._seen = (mtime, stores, {s: run.jurisdictions.get(s, default) for s in stores})
        return list(self._seen[1]), dict(self._seen[2])

    def __call__(self) -> list[str]:
        return self._read()[0]

    def jurisdictions(self) -> dict[str, str]:
        """Each store's law; empty when no run is prepared yet (requests then follow the default)."""
        try:
            return self._read()[1]
        except SiloguardError:
            return {}


def _service_secret(settings: Settings) -> bytes:
    """The API's HMAC key (subject digests, code hashes), created on first use in the key store."""
    from siloguard.privacy.keys import FileKeyStore

    store = FileKeyStore(settings.keys.root)
    name = "api/subject-digest"
    store.create(name, os.urandom(32))
    data = store.read(name)
    assert data is not None
    return data

