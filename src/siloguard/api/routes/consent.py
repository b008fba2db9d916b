"""A verified subject's consent per purpose in every store: what they asked here, and whether each
store has recorded it (stores keep the registry; the service files tasks)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from siloguard.api.auth import Authorizer, Caller
from siloguard.api.deps import AuthzDep, CallerDep, GpcHeader, PurposeId, ServiceDep, gpc, subject_of
from siloguard.api.schemas import ConsentChange, ConsentState, PurposeState, StoreConsentState
from siloguard.dsr.service import DsrService

router = APIRouter()


@router.get("/v1/consent", response_model=ConsentState, tags=["consent"])
async def get_consent(service: ServiceDep, authz: AuthzDep, who: CallerDep, sec_gpc: GpcHeader = None) -> ConsentState:
    """Your consent per purpose in every store."""
    if sec_gpc is not None and sec_gpc.strip() == "1":
        # Recording the signal writes (and may wait for the writer): in the thread pool.
        return await run_in_threadpool(_consent_with_gpc, service, authz, who, sec_gpc)
    # Without a GPC signal this is reads only: a Casbin decision and one indexed single-statement
    # read outside a transaction (never waits for a writer), cheaper inline than a thread hop.
    return _consent_state(service, subject_of(service, authz, who, "consent_read"))


def _consent_with_gpc(service: DsrService, authz: Authorizer, who: Caller, sec_gpc: str) -> ConsentState:
    ref = subject_of(service, authz, who, "consent_read")
    gpc(service, sec_gpc, ref)
    return _consent_state(service, ref)


def _consent_state(service: DsrService, ref: str) -> ConsentState:
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
    return _consent_state(service, ref)
