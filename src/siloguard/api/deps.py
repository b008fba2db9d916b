"""What every route shares: the service and authorizer of the app, the caller, path and header
types, and the helpers that turn a request row into what a caller may see.

Routes (:mod:`siloguard.api.routes`) take these as FastAPI dependencies (``ServiceDep``,
``AuthzDep``, ``CallerDep``), so each route module is a plain ``APIRouter`` and
:func:`siloguard.api.app.create_app` only wires them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from siloguard.api.auth import Authorizer, Caller
from siloguard.api.errors import ApiError
from siloguard.api.schemas import DataUse, RequestView
from siloguard.dsr.machine import TERMINAL
from siloguard.dsr.service import DsrService

__all__ = [
    "BEARER", "CENTURY", "OPTIONAL_AUTH", "AuthzDep", "CallerDep", "GpcHeader", "OptionalCallerDep", "PurposeId", "RequestId", "ServiceDep", "StoreId", "TaskId",
    "caller_of", "gpc", "service_ref", "subject_of", "subject_request", "view",
]


# ``async`` because they only read the app's state: FastAPI runs a plain ``def`` dependency in
# its thread pool, and two thread hops per request showed in the API's CPU profile (bench/api.py).
async def _service(request: Request) -> DsrService:
    return request.app.state.service


async def _authz(request: Request) -> Authorizer:
    return request.app.state.authz


ServiceDep = Annotated[DsrService, Depends(_service)]
AuthzDep = Annotated[Authorizer, Depends(_authz)]


RequestId = Annotated[str, Path(pattern=r"^dsr-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", max_length=40)]
TaskId = Annotated[str, Path(pattern=r"^task-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", max_length=48)]
StoreId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
PurposeId = Annotated[DataUse, Path(description="a fideslang data use")]
GpcHeader = Annotated[str | None, Header(alias="Sec-GPC", max_length=8, description="Global Privacy Control: 1 = opt out of sale/sharing")]
CENTURY = timedelta(days=36525)  # a century either way covers every deadline


_bearer = HTTPBearer(auto_error=False, description="an API key (sgk_...) or a subject token (sgs_...)")
#: For a route that reads its caller itself (:func:`caller_of`): the scheme in the OpenAPI document.
BEARER = Security(_bearer)


def caller_of(request: Request) -> Caller:
    """The caller of ``request`` (reads the database for a credential: call it from a thread).

    The raw header, so a malformed one is a 401 rather than an anonymous caller."""
    return request.app.state.authz.caller(request.headers.get("authorization"))


# ``async``, and the database read of a credential goes to the thread pool: on the event loop a
# wait for a pooled connection or a slow database would stall every request of the process,
# while a call without a credential (a data subject filing a request) needs no thread at all.
async def _maybe_caller(request: Request) -> Caller:
    if not request.headers.get("authorization"):
        return Caller()
    return await run_in_threadpool(caller_of, request)


async def _caller(request: Request, _documented: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> Caller:
    return await _maybe_caller(request)  # the same; ``_documented`` puts the scheme in the OpenAPI document


CallerDep = Annotated[Caller, Depends(_caller)]
#: Routes a data subject uses before having any credential: the bearer token is optional.
OptionalCallerDep = Annotated[Caller, Depends(_maybe_caller)]
OPTIONAL_AUTH = {"security": [{}, {"HTTPBearer": []}]}



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


def view(row: dict[str, Any], now: datetime, *, with_result: bool = True, status: str | None = None) -> RequestView:
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



def gpc(service: DsrService, sec_gpc: str | None, customer_ref: str | None) -> None:
    """Record a ``Sec-GPC: 1`` signal of a verified subject (not while stores erase them)."""
    if sec_gpc is not None and sec_gpc.strip() == "1" and customer_ref:
        if service.erasing(service.digest(customer_ref)):
            return  # stores are erasing them: nothing new is recorded about them
        service.record_gpc(customer_ref)

def subject_request(service: DsrService, authz: Authorizer, caller: Caller, request_id: str, operation: str) -> dict[str, Any]:
    """The request row, if ``caller`` may do ``operation`` on it (401/403/404 alike for unknown ids)."""
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


def subject_of(service: DsrService, authz: Authorizer, who: Caller, operation: str) -> str:
    """The customer reference of the verified subject calling a consent route."""
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


def service_ref(customer_ref: str) -> str:
    from siloguard.dsr.service import normalise_ref

    return normalise_ref(customer_ref)
