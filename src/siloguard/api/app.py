"""The privacy API: ``create_app(settings)`` builds it, ``siloguard serve`` runs it (uvicorn).

Routes are versioned under ``/v1``; OpenAPI at ``/openapi.json``, docs at ``/docs``. Each
call gets its own database connections (SQLAlchemy, per request; writes in serialised
transactions, see :mod:`siloguard.dsr.service`); the app refuses to start on a database that
is not at this siloguard's schema (run ``siloguard db upgrade``).

A background thread carries verified requests forward every ``api.resume_every_seconds``,
and once at start-up, so work interrupted by a crash or a SIGKILL is finished after a
restart.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from siloguard.api.auth import Authorizer, Caller
from siloguard.api.errors import ERROR_RESPONSES, ApiError, install_error_handlers
from siloguard.api.protect import Protect
from siloguard.api.schemas import (
    ConsentChange,
    ConsentState,
    DataUse,
    DecisionBody,
    Health,
    PurposeState,
    ReceiptBody,
    ReceiptKey,
    RequestCreate,
    RequestList,
    RequestView,
    Status,
    StoreConsentState,
    SubmitResponse,
    TaskList,
    TaskStatus,
    TaskView,
    VerifyBody,
    VerifyResponse,
)
from siloguard.config import Settings
from siloguard.dsr.machine import TERMINAL
from siloguard.dsr.service import ANONYMOUS, DsrService
from siloguard.storage.db import create_engine, head_revision, require_current_schema

__all__ = ["create_app"]

log = logging.getLogger(__name__)

RequestId = Annotated[str, Path(pattern=r"^dsr-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", max_length=40)]
TaskId = Annotated[str, Path(pattern=r"^task-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", max_length=48)]
StoreId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
PurposeId = Annotated[DataUse, Path(description="a fideslang data use")]
GpcHeader = Annotated[str | None, Header(alias="Sec-GPC", max_length=8, description="Global Privacy Control: 1 = opt out of sale/sharing")]
_CENTURY = timedelta(days=36525)


_bearer = HTTPBearer(auto_error=False, description="an API key (sgk_...) or a subject token (sgs_...)")


def _caller(request: Request, _documented: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> Caller:
    # The raw header, so a malformed one is a 401 rather than an anonymous caller.
    return request.app.state.authz.caller(request.headers.get("authorization"))


_QUERY_NAMES: dict[int, frozenset[str]] = {}  # by id(route): routes live as long as the process


def _query_names(route: APIRoute) -> frozenset[str]:
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        names = _QUERY_NAMES[id(route)] = frozenset(p.alias for p in get_flat_dependant(route.dependant).query_params)
    return names


def _known_query_only(request: Request) -> None:
    """Refuse query parameters an operation does not take (strict input; nothing ignored silently)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    allowed = _query_names(route)
    if set(request.query_params) - allowed:
        takes = ", ".join(sorted(allowed)) or "none"
        raise ApiError(422, "invalid", f"unknown query parameter(s); this operation takes: {takes}")


def _maybe_caller(request: Request) -> Caller:
    return request.app.state.authz.caller(request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(_caller)]
#: Routes a data subject uses before having any credential: the bearer token is optional.
OptionalCallerDep = Annotated[Caller, Depends(_maybe_caller)]
_OPTIONAL_AUTH = {"security": [{}, {"HTTPBearer": []}]}


class _Resumer:
    """Carries pending requests forward in the background (and at start-up)."""

    def __init__(self, service: DsrService, every: float) -> None:
        self.service, self.every = service, every
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start sweeping (again after a stop: an ASGI server may run the lifespan more than once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="dsr-resume", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.service.resume()
            except Exception as exc:  # noqa: BLE001  the sweep retries on its next turn
                log.warning("request sweep failed (%s); retrying", type(exc).__name__)
            stop.wait(self.every)


def _result(row: dict[str, Any]) -> dict[str, Any] | None:
    """What a request view shows of its result: never the content of an access answer.

    The answer is the subject's data; it is read only at ``/v1/requests/{id}/access``, by the
    subject. Officers see that it exists (and errors), listings and replays the same.
    """
    if not row["result"]:
        return None
    result = json.loads(row["result"])
    if row["kind"] != "access" or "error" in result or "denied" in result:
        return result
    if result.get("answer_deleted") or result.get("erased"):
        return {"answer": "deleted"}
    return {"answer": f"/v1/requests/{row['id']}/access"}


def _view(row: dict[str, Any], now: datetime, *, with_result: bool = True, status: str | None = None) -> RequestView:
    def aware(v: datetime | None) -> datetime | None:
        return None if v is None else (v if v.tzinfo else v.replace(tzinfo=timezone.utc))

    due = aware(row["due_at"])
    status = status or row["status"]
    return RequestView(
        id=row["id"], kind=row["kind"], jurisdiction=row["jurisdiction"], status=status,
        received_at=aware(row["received_at"]), due_at=due, ack_due_at=aware(row["ack_due_at"]),
        extension_notice_by=aware(row["extension_notice_by"]), extended=bool(row["extended"]),
        overdue=status not in TERMINAL and due <= now,
        result=_result(row) if with_result else None,
    )


def create_app(settings: Settings, *, service: DsrService | None = None) -> FastAPI:
    """The API for ``settings``; raises StorageError if the database is not migrated."""
    from siloguard.audit import AuditLog
    from siloguard.policies.enforcer import PolicyEnforcer

    engine = create_engine(settings.database.url)
    require_current_schema(engine)
    if service is None:
        service = DsrService(settings, engine, AuditLog.open(settings))
    authz = Authorizer(engine, service, PolicyEnforcer())
    resumer = _Resumer(service, settings.api.resume_every_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Iterator[None]:  # type: ignore[misc]
        resumer.start()
        try:
            yield
        finally:
            resumer.stop()

    app = FastAPI(
        title="siloguard privacy API",
        version="1",
        description="Data-subject requests (GDPR/CCPA) with legal clocks, erasure across stores, consent and GPC.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(_known_query_only)],
    )
    app.state.service = service
    app.state.authz = authz
    install_error_handlers(app)
    app.add_middleware(
        Protect,
        max_body_bytes=settings.api.max_body_bytes,
        rate_per_key=settings.api.rate_per_key,
        rate_per_ip=settings.api.rate_per_ip,
        max_headers=settings.api.max_headers,
        max_header_bytes=settings.api.max_header_bytes,
    )

    def gpc(sec_gpc: str | None, customer_ref: str | None) -> None:
        if sec_gpc is not None and sec_gpc.strip() == "1" and customer_ref:
            if service.erasing(service.digest(customer_ref)):
                return  # stores are erasing them: nothing new is recorded about them
            service.record_gpc(customer_ref)

    def subject_request(caller: Caller, request_id: str, operation: str) -> dict[str, Any]:
        if caller.anonymous and operation != "submit":
            # before the look-up: an existing and an unknown id answer alike
            raise ApiError(401, "unauthenticated", "this operation needs a subject token or an API key", {"www-authenticate": "Bearer"})
        if caller.key is not None:
            authz.authorize(caller, operation)  # a key's role decides before the look-up, for the same reason
        row = service.get(request_id)
        if caller.session is not None and caller.session.digest != row["subject_digest"]:
            raise ApiError(404, "not_found", "no such request; check the request id")
        authz.authorize(caller, operation, subject_digest=row["subject_digest"])
        return row

    # ---- service -------------------------------------------------------------------------

    revision = head_revision()  # checked above; reading the migration scripts again per call is slow

    @app.get("/v1/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness and the schema revision served (no authentication)."""
        return Health(status="ok", schema_revision=revision)

    # ---- requests ------------------------------------------------------------------------

    @app.post("/v1/requests", response_model=SubmitResponse, status_code=201, tags=["requests"], openapi_extra=_OPTIONAL_AUTH,
              responses={200: {"model": SubmitResponse, "description": "Same idempotency key: the earlier request"}})
    def submit_request(
        body: Annotated[RequestCreate, Body()],
        response: Response,
        who: OptionalCallerDep,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")] = None,
        sec_gpc: GpcHeader = None,
    ) -> SubmitResponse:
        """Submit an access, erasure, opt-out or consent request; a code is sent to verify it.

        An ``Idempotency-Key`` replays only the caller's own submission: a credential's own, or
        without one, exactly the same request. A replay shows no more than the first answer did.
        """
        digest = service.digest(service_ref(body.customer_ref))
        if who.session is not None and who.session.digest != digest:
            raise ApiError(403, "forbidden", "a subject token acts only for its own subject")
        authz.authorize(who, "submit", subject_digest=digest)
        scope = who.key.principal if who.key else (who.session.principal if who.session else ANONYMOUS)
        signalled = bool(sec_gpc and sec_gpc.strip() == "1")
        row, created = service.submit(
            kind=body.kind, customer_ref=body.customer_ref, contact=body.contact, answer_key=getattr(body, "answer_key", None),
            idempotency_key=idempotency_key,
            consent=[{"purpose": c.purpose.value, "action": c.action} for c in getattr(body, "consent", [])],
            gpc=signalled, actor=who.actor, scope=scope,
        )
        if signalled and who.session is not None:
            gpc(sec_gpc, who.session.customer_ref)  # a verified subject: at once
        status = None
        if not created:
            response.status_code = 200
            if who.anonymous:  # the first answer's status and deadline, not what happened since
                status = service.submitted_status(row["id"])
                row = {**row, **service.original_clock(row)}
        current = status or row["status"]
        state = "code_sent" if current == "verifying" else ("not_required" if created else "done")
        return SubmitResponse(request=_view(row, service.clock(), with_result=False, status=status), created=created, verification=state)

    @app.post("/v1/requests/{request_id}/verify", response_model=VerifyResponse, tags=["requests"], openapi_extra=_OPTIONAL_AUTH)
    def verify_request(request_id: RequestId, body: VerifyBody, who: OptionalCallerDep, sec_gpc: GpcHeader = None) -> VerifyResponse:
        """Prove the identity behind a request with the one-time code; returns a subject token.

        For an access request, ``answer_key`` (a P-256 public key) seals the answer to the
        subject: the service then holds ciphertext only."""
        row = subject_request(who, request_id, "submit")
        verified, token = service.verify(request_id, body.code, answer_key=body.answer_key)
        gpc(sec_gpc, row["customer_ref"])
        return VerifyResponse(request=_view(verified, service.clock()), subject_token=f"sgs_{token}")

    @app.get("/v1/requests", response_model=RequestList, tags=["requests"])
    def list_requests(
        request: Request,
        who: CallerDep,
        due_within: Annotated[timedelta | None, Query(description="active requests due within this (ISO 8601 duration or seconds), overdue included; negative: overdue by at least this")] = None,
        status: Annotated[Status | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="requests per page")] = 100,
        cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="from the previous page's 'next' link")] = None,
        sec_gpc: GpcHeader = None,
    ) -> RequestList:
        """Officers: every request (soonest deadline first), a page at a time. A subject: their own."""
        if due_within is not None:  # a century either way covers every deadline (and cannot overflow)
            due_within = max(-_CENTURY, min(_CENTURY, due_within))
        if who.session is not None:
            authz.authorize(who, "review", subject_digest=who.session.digest)
            gpc(sec_gpc, who.session.customer_ref)
            digest: str | None = who.session.digest
        else:
            authz.authorize(who, "review")
            digest = None
        rows, total, following = service.page(subject_digest=digest, due_within=due_within, status=status, limit=limit, cursor=cursor)
        now = service.clock()
        link = None
        if following is not None:  # relative to the API's root, with the same filters
            url = request.url.include_query_params(cursor=following)
            link = f"{url.path}?{url.query}"
        return RequestList(requests=[_view(r, now) for r in rows], total=total, next=link)

    @app.get("/v1/requests/{request_id}", response_model=RequestView, tags=["requests"])
    def get_request(request_id: RequestId, who: CallerDep, sec_gpc: GpcHeader = None) -> RequestView:
        """One request with its status, deadline and, once done, its result."""
        row = subject_request(who, request_id, "review")
        if who.session is not None:
            gpc(sec_gpc, who.session.customer_ref)
        return _view(row, service.clock())

    @app.get("/v1/requests/{request_id}/access", tags=["requests"])
    def get_access_answer(request_id: RequestId, who: CallerDep) -> dict[str, Any]:
        """The answer to a completed access request: everything held, store by store (Art. 15)."""
        row = subject_request(who, request_id, "access")
        if row["kind"] != "access":
            raise ApiError(409, "conflict", "this is not an access request")
        if row["status"] != "completed":
            raise ApiError(409, "conflict", f"the request is {row['status']}; the answer is ready once it is completed")
        gone = ApiError(410, "gone", f"the answer was deleted (once downloaded, {service.settings.api.answer_ttl_days} days "
                        "after completion, or when you were erased): submit a new access request")
        if who.session is not None:
            answer = service.take_answer(row["id"])  # the subject has it now: the service keeps no copy
            if answer is None:
                raise gone
        else:
            answer = json.loads(row["result"])
            if answer.get("answer_deleted") or answer.get("erased"):
                raise gone
            service.answer_read(row["id"], actor=who.actor)
        if "sealed" in answer:
            return {"request": row["id"], "sealed": answer["sealed"]}
        return {"request": row["id"], "answer": answer}

    @app.post("/v1/requests/{request_id}/extend", response_model=RequestView, tags=["requests"])
    def extend_request(request_id: RequestId, body: DecisionBody, who: CallerDep) -> RequestView:
        """Extend the deadline once, with reasons, before the original deadline passes (DPO)."""
        authz.authorize(who, "decide")
        return _view(service.extend(request_id, reason=body.reason, actor=who.actor, explanation=body.explanation), service.clock())

    @app.post("/v1/requests/{request_id}/deny", response_model=RequestView, tags=["requests"])
    def deny_request(request_id: RequestId, body: DecisionBody, who: CallerDep) -> RequestView:
        """Refuse a request, with reasons (DPO)."""
        authz.authorize(who, "decide")
        return _view(service.deny(request_id, reason=body.reason, actor=who.actor, explanation=body.explanation), service.clock())

    # ---- stores ------------------------------------------------------------------------------

    @app.get("/v1/stores/{store}/tasks", response_model=TaskList, tags=["stores"])
    def store_tasks(store: StoreId, who: CallerDep) -> TaskList:
        """The store's pending erasure tasks (its store key only)."""
        authz.authorize(who, "fulfil", store=store)
        return TaskList(tasks=[TaskView(**t) for t in service.pending_tasks(store)])

    @app.get("/v1/stores/{store}/tasks/{task_id}", response_model=TaskStatus, tags=["stores"])
    def store_task(store: StoreId, task_id: TaskId, who: CallerDep) -> TaskStatus:
        """Whether a task is still to be done: a store asks right before it erases anything."""
        authz.authorize(who, "fulfil", store=store)
        task = service.task_status(store, task_id)
        return TaskStatus(id=task["id"], request_id=task["request_id"], store=task["store"], status=task["status"])

    @app.post("/v1/stores/{store}/tasks/{task_id}/claim", response_model=TaskStatus, tags=["stores"])
    def claim_task(store: StoreId, task_id: TaskId, who: CallerDep) -> TaskStatus:
        """Claim a task right before erasing: ``claimed`` means erase now (the request cannot be
        denied while the claim holds); ``cancelled`` or ``done`` means erase nothing."""
        authz.authorize(who, "fulfil", store=store)
        task = service.claim_task(store, task_id)
        return TaskStatus(id=task["id"], request_id=task["request_id"], store=task["store"], status=task["status"])

    @app.get("/v1/stores/{store}/receipt-key", response_model=ReceiptKey, tags=["stores"])
    def store_receipt_key(store: StoreId, who: CallerDep) -> ReceiptKey:
        """The receipt key registered for the store: a store checks it is its own before erasing."""
        authz.authorize(who, "fulfil", store=store)
        return ReceiptKey(store=store, public_key=base64.b64encode(service.registered_key(store)).decode())

    @app.post("/v1/stores/{store}/tasks/{task_id}/receipt", response_model=RequestView, tags=["stores"])
    def post_receipt(store: StoreId, task_id: TaskId, body: ReceiptBody, who: CallerDep) -> RequestView:
        """A signed receipt for an erasure task; the request completes with the last store's."""
        authz.authorize(who, "fulfil", store=store)
        try:
            signature = base64.b64decode(body.signature, validate=True)
        except (binascii.Error, ValueError):
            service.refuse_receipt(store, task_id, "malformed", actor=who.actor)
            raise ApiError(422, "invalid", "signature must be base64") from None
        row = service.post_receipt(store, task_id, body.receipt, signature, actor=who.actor)
        return _view(row, service.clock())

    # ---- consent -----------------------------------------------------------------------------

    def subject_of(who: Caller, operation: str) -> str:
        if who.session is None:
            if who.key is not None:
                raise ApiError(403, "forbidden", "consent endpoints serve data subjects (a subject token)")
            raise ApiError(401, "unauthenticated", "verify a request first to get a subject token", {"www-authenticate": "Bearer"})
        authz.authorize(who, operation, subject_digest=who.session.digest)
        if not who.session.customer_ref:
            raise ApiError(409, "conflict", "this subject was erased; nothing is held")
        if operation == "consent_write" and service.erasing(who.session.digest):
            raise ApiError(409, "conflict", "your data is being erased in every store: no consent is recorded any more")
        return who.session.customer_ref

    @app.get("/v1/consent", response_model=ConsentState, tags=["consent"])
    def get_consent(who: CallerDep, sec_gpc: GpcHeader = None) -> ConsentState:
        """Your consent per purpose in every store."""
        ref = subject_of(who, "consent_read")
        gpc(sec_gpc, ref)
        return ConsentState(stores=[
            StoreConsentState(store=store, purposes=[PurposeState(purpose=p, consented=ok) for p, ok in states])
            for store, states in service.consent_state(ref)
        ])

    @app.put("/v1/consent/{purpose}", response_model=ConsentState, tags=["consent"])
    def change_consent(purpose: PurposeId, body: ConsentChange, who: CallerDep, sec_gpc: GpcHeader = None) -> ConsentState:
        """Grant or withdraw consent for a purpose, in every store."""
        ref = subject_of(who, "consent_write")
        service.change_consent(ref, purpose.value, body.action)
        gpc(sec_gpc, ref)
        return get_consent(who)

    return app


def service_ref(customer_ref: str) -> str:
    from siloguard.dsr.service import normalise_ref

    return normalise_ref(customer_ref)
