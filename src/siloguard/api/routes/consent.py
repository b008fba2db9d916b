"""A verified subject's consent per purpose in every store: what they asked here, and whether each
store has recorded it (stores keep the registry; the service files tasks)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from siloguard.api.auth import Authorizer, Caller
from siloguard.api.deps import BEARER, AuthzDep, CallerDep, GpcHeader, PurposeId, ServiceDep, caller_of, gpc, subject_of
from siloguard.api.schemas import ConsentChange, ConsentState, PurposeState, StoreConsentState
from siloguard.dsr.service import DsrService

router = APIRouter()


# Plain ``def`` routes (the thread pool): a wait for a pooled connection or a slow database on
# the event loop would stall every request of the process. The lookup reads its caller in the
# same thread (``caller_of``) rather than through ``CallerDep``: one thread hop per call, not two.
@router.get("/v1/consent", response_model=ConsentState, tags=["consent"], dependencies=[BEARER])
def get_consent(request: Request, service: ServiceDep, authz: AuthzDep, sec_gpc: GpcHeader = None) -> ConsentState:
    """Your consent per purpose in every store."""
    return _consent(service, authz, caller_of(request), sec_gpc)


def _consent(service: DsrService, authz: Authorizer, who: Caller, sec_gpc: str | None) -> ConsentState:
    ref = subject_of(service, authz, who, "consent_read")
    gpc(service, sec_gpc, ref)
    return ConsentState(stores=[
        StoreConsentState(store=store, purposes=[PurposeState(purpose=p, consented=ok, applied=done) for p, ok, done in states])
        for store, states in service.consent_state(ref)
    ])


@router.put("/v1/consent/{purpose}", response_model=ConsentState, tags=["consent"])
def change_consent(service: ServiceDep, authz: AuthzDep, purpose: PurposeId, body: ConsentChange, who: CallerDep, sec_gpc: GpcHeader = None) -> ConsentState:
    """Grant or withdraw consent for a purpose, in every store (each records it at its next sync)."""
    ref = subject_of(service, authz, who, "consent_write")
    service.change_consent(ref, purpose.value, body.action)
    gpc(service, sec_gpc, ref)
    return _consent(service, authz, who, None)
