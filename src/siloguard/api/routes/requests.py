"""Requests: submit, verify, list, read, the access answer, and the DPO's extension and denial."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import HTMLResponse

from siloguard.api.deps import (
    CENTURY,
    OPTIONAL_AUTH,
    AuthzDep,
    CallerDep,
    GpcHeader,
    OptionalCallerDep,
    RequestId,
    ServiceDep,
    gpc,
    service_ref,
    subject_request,
    view,
)
from siloguard.api.errors import ApiError
from siloguard.api.schemas import (
    DecisionBody,
    RequestCreate,
    RequestList,
    RequestView,
    Status,
    SubmitResponse,
    VerifyBody,
    VerifyResponse,
)
from siloguard.dsr.service import ANONYMOUS

router = APIRouter()


@router.post("/v1/requests", response_model=SubmitResponse, status_code=201, tags=["requests"], openapi_extra=OPTIONAL_AUTH,
          responses={200: {"model": SubmitResponse, "description": "Same idempotency key: the earlier request"}})
def submit_request(
    service: ServiceDep,
    authz: AuthzDep,
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
        gpc(service, sec_gpc, who.session.customer_ref)  # a verified subject: at once
    status = None
    if not created:
        response.status_code = 200
        if who.anonymous:  # the first answer's status and deadline, not what happened since
            status = service.submitted_status(row["id"])
            row = {**row, **service.original_clock(row)}
    current = status or row["status"]
    state = "code_sent" if current == "verifying" else ("not_required" if created else "done")
    return SubmitResponse(request=view(row, service.clock(), with_result=False, status=status), created=created, verification=state)

@router.post("/v1/requests/{request_id}/verify", response_model=VerifyResponse, tags=["requests"], openapi_extra=OPTIONAL_AUTH)
def verify_request(service: ServiceDep, authz: AuthzDep, request_id: RequestId, body: VerifyBody, who: OptionalCallerDep, sec_gpc: GpcHeader = None) -> VerifyResponse:
    """Prove the identity behind a request with the one-time code; returns a subject token.

    For an access request, ``answer_key`` (a P-256 public key) seals the answer to the
    subject: the service then holds ciphertext only."""
    row = subject_request(service, authz, who, request_id, "submit")
    verified, token = service.verify(request_id, body.code, answer_key=body.answer_key)
    gpc(service, sec_gpc, row["customer_ref"])
    return VerifyResponse(request=view(verified, service.clock()), subject_token=f"sgs_{token}")

@router.get("/v1/requests", response_model=RequestList, tags=["requests"])
def list_requests(
    service: ServiceDep,
    authz: AuthzDep,
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
        due_within = max(-CENTURY, min(CENTURY, due_within))
    if who.session is not None:
        authz.authorize(who, "review", subject_digest=who.session.digest)
        gpc(service, sec_gpc, who.session.customer_ref)
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
    return RequestList(requests=[view(r, now) for r in rows], total=total, next=link)

@router.get("/v1/requests/{request_id}", response_model=RequestView, tags=["requests"])
def get_request(service: ServiceDep, authz: AuthzDep, request_id: RequestId, who: CallerDep, sec_gpc: GpcHeader = None) -> RequestView:
    """One request with its status, deadline and, once done, its result."""
    row = subject_request(service, authz, who, request_id, "review")
    if who.session is not None:
        gpc(service, sec_gpc, who.session.customer_ref)
    return view(row, service.clock())

@router.get("/v1/requests/{request_id}/access", tags=["requests"],
            responses={200: {"content": {"application/json": {}, "text/html": {}},
                             "description": "the answer (JSON), or with format=html a page to read and keep that carries the JSON too"}})
def get_access_answer(
    service: ServiceDep, authz: AuthzDep, request_id: RequestId, who: CallerDep,
    format: Annotated[Literal["json", "html"], Query(description="json (default) or html: the answer in plain words, with the JSON inside")] = "json",  # noqa: A002
) -> Any:
    """The answer to a completed access request: everything held, store by store (Art. 15).

    A subject can take it once: the service then deletes its copy (keep what you download)."""
    row = subject_request(service, authz, who, request_id, "access")
    if row["kind"] != "access":
        raise ApiError(409, "conflict", "this is not an access request")
    if row["status"] != "completed":
        raise ApiError(409, "conflict", f"the request is {row['status']}; the answer is ready once it is completed")
    gone = ApiError(410, "gone", f"the answer was deleted (once downloaded, {service.settings.api.answer_ttl_days} days "
                    "after completion, or when you were erased): submit a new access request")
    from siloguard.dsr.effects import for_subject

    stored = json.loads(row["result"] or "{}")
    if format == "html" and "sealed" in stored:  # before taking it: the subject keeps it
        raise ApiError(409, "conflict", "this answer is sealed to your key: download it as JSON (format=json) and open "
                       "it with siloguard answer open")
    if stored.get("answer_deleted") or stored.get("erased"):
        raise gone
    page = None
    if format == "html":  # built before the answer is taken: a page that cannot be built loses nothing
        from siloguard.api.answer import render_answer

        shown = for_subject(stored, who.session.customer_ref or "") if who.session is not None else stored
        page = render_answer(row["id"], shown, now=service.clock())
    if who.session is not None:
        answer = service.take_answer(row["id"])  # the subject has it now: the service keeps no copy
        if answer is None:
            raise gone
        answer = for_subject(answer, who.session.customer_ref or "")
    else:
        answer = stored
        service.answer_read(row["id"], actor=who.actor)
    if "sealed" in answer:
        return {"request": row["id"], "sealed": answer["sealed"]}
    if page is not None:
        from siloguard.api.answer import standalone_headers

        return HTMLResponse(page, headers=standalone_headers())
    return {"request": row["id"], "answer": answer}

@router.post("/v1/requests/{request_id}/extend", response_model=RequestView, tags=["requests"])
def extend_request(service: ServiceDep, authz: AuthzDep, request_id: RequestId, body: DecisionBody, who: CallerDep) -> RequestView:
    """Extend the deadline once, with reasons, before the original deadline passes (DPO)."""
    authz.authorize(who, "decide")
    return view(service.extend(request_id, reason=body.reason, actor=who.actor, explanation=body.explanation), service.clock())

@router.post("/v1/requests/{request_id}/deny", response_model=RequestView, tags=["requests"])
def deny_request(service: ServiceDep, authz: AuthzDep, request_id: RequestId, body: DecisionBody, who: CallerDep) -> RequestView:
    """Refuse a request, with reasons (DPO)."""
    authz.authorize(who, "decide")
    return view(service.deny(request_id, reason=body.reason, actor=who.actor, explanation=body.explanation), service.clock())
