"""Request and response bodies of the API (pydantic), as the OpenAPI schema shows them."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from siloguard.policies.taxonomy import load_taxonomy

__all__ = [
    "AccessRequest", "ConsentChange", "ConsentRequest", "ConsentState", "DataUse", "RightsRequest", "DecisionBody", "ReceiptBody", "RequestCreate", "RequestList",
    "ReceiptKey", "RequestView", "Status", "SubmitResponse", "TaskList", "TaskStatus", "TaskView", "VerifyBody", "VerifyResponse",
]

Kind = Literal["access", "erasure", "opt_out", "consent"]
#: siloguard.dsr.machine.STATUSES
Status = Literal["received", "verifying", "verified", "in_progress", "extended", "completed", "denied", "failed", "unverified"]
Jurisdiction = Literal["gdpr", "ccpa"]
#: Same as the service's check (siloguard.dsr.service), so the schema says what is accepted.
EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}$"
#: Every fideslang data use of policies/taxonomy.yaml: a purpose outside it is refused.
DataUse = Enum("DataUse", {key: key for key in sorted(load_taxonomy().data_uses)}, type=str)  # type: ignore[misc]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestConsentChange(_Body):
    purpose: DataUse
    action: Literal["grant", "withdraw"]


class _RequestFields(_Body):
    """What a data subject says in a request. No jurisdiction: the law follows from where the
    stores operate (run.json ``jurisdictions``), never from the caller."""

    customer_ref: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                              description="the customer number the stores know you by")
    contact: str | None = Field(None, min_length=6, max_length=254, pattern=EMAIL_PATTERN,
                                description="where to send notices about the request (the verification code goes "
                                "to the contact the stores hold for this customer)")


class AccessRequest(_RequestFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"kind": "access", "customer_ref": "12738", "contact": "me@example.org"}]})

    kind: Literal["access"] = Field(description="access (Art. 15 / right to know)")
    answer_key: str | None = Field(
        None, min_length=80, max_length=100, pattern=r"^[A-Za-z0-9+/_-]+={0,2}$",
        description="your P-256 public key (base64 of the raw uncompressed point) to seal the answer to, bound to the "
        "request from the start (safer than giving it at verification: whoever holds the code cannot swap it)")


class RightsRequest(_RequestFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"kind": "erasure", "customer_ref": "12738"}]})

    kind: Literal["erasure", "opt_out"] = Field(
        description="erasure (Art. 17 / right to delete), opt_out (Art. 21 objection / opt-out of sale and sharing)"
    )


class ConsentRequest(_RequestFields):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"kind": "consent", "customer_ref": "12738", "consent": [{"purpose": "personalize.profiling", "action": "withdraw"}]}]})

    kind: Literal["consent"]
    consent: list[RequestConsentChange] = Field(min_length=1, max_length=20)


RequestCreate = Annotated[AccessRequest | RightsRequest | ConsentRequest, Field(discriminator="kind")]


class RequestView(BaseModel):
    id: str
    kind: Kind
    jurisdiction: Jurisdiction
    status: Status
    received_at: datetime
    due_at: datetime = Field(description="the current legal deadline")
    ack_due_at: datetime | None = Field(None, description="CCPA: acknowledge by")
    extension_notice_by: datetime | None = Field(None, description="an extension must be announced before this")
    extended: bool
    overdue: bool
    result: dict[str, Any] | None = Field(
        None, description="the outcome: receipts of an erasure, effects of an opt-out or consent request, an "
        "error; never an access answer (GET /v1/requests/{id}/access, the subject only)"
    )


class SubmitResponse(BaseModel):
    request: RequestView
    created: bool = Field(description="false when the idempotency key matched an earlier request")
    verification: Literal["code_sent", "not_required", "done"]


class VerifyBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"code": "04918273"}]})

    code: str = Field(min_length=8, max_length=8, pattern=r"^[0-9]{8}$")
    answer_key: str | None = Field(
        None, min_length=80, max_length=100, pattern=r"^[A-Za-z0-9+/_-]+={0,2}$",
        description="access requests: your P-256 public key (base64 of the raw uncompressed point, 65 bytes) to seal "
        "the answer to; the service then keeps only ciphertext (`siloguard answer keygen` makes one)")


class VerifyResponse(BaseModel):
    request: RequestView
    subject_token: str = Field(description="bearer token for your own requests and consent; keep it secret")


class RequestList(BaseModel):
    requests: list[RequestView]
    total: int = Field(description="requests matching the filters, on every page")
    next: str | None = Field(None, description="the URL of the next page; absent on the last page")


class TaskStatus(BaseModel):
    id: str
    request_id: str
    store: str
    status: Literal["pending", "claimed", "done", "cancelled"] = Field(
        description="claimed (after POST .../claim): erase now; pending: not claimed yet; cancelled: the request "
        "was denied or closed, erase nothing; done: receipt accepted")


class ReceiptKey(BaseModel):
    store: str
    public_key: str = Field(description="base64 raw Ed25519 public key the API checks this store's receipts against")


class DecisionBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "complexity", "explanation": "Your request covers seven stores; we need one more month."}]})

    reason: str = Field(min_length=3, max_length=64, pattern=r"^[a-z](?:[a-z-]|[0-9]{1,4}(?:[a-z-]|$))*$",
                        description="a reason code such as complexity or number-of-requests (audited: "
                        "lower-case words, no run of 5 or more digits)")
    explanation: str | None = Field(None, max_length=2000, description="the reasons as told to the subject")


class TaskView(BaseModel):
    id: str
    request_id: str
    store: str
    customer_ref: str | None
    created_at: datetime
    kind: Literal["erasure", "effects", "access"] = Field(
        "erasure", description="erasure: erase, then post a signed receipt; effects: record the consent events in "
        "payload, then POST .../done; access: answer from the store's site (sealed to payload.answer_key when given), "
        "then POST .../done with the answer")
    payload: dict[str, Any] = Field(default_factory=dict, description="what the store is to do (events, gpc, answer_key)")


class TaskDone(_Body):
    answer: str | None = Field(
        None, description="an access task's answer: JSON {\"sealed\": {...}} when payload.answer_key is set, "
        "else {\"part\": {...}} with this store's records only")


class TaskList(BaseModel):
    tasks: list[TaskView]


class ReceiptBody(_Body):
    receipt: str = Field(min_length=2, max_length=4096, description="canonical JSON of the receipt")
    signature: str = Field(min_length=4, max_length=128, description="base64 Ed25519 signature by the store's receipt key")


class ConsentChange(_Body):
    action: Literal["grant", "withdraw"]


class PurposeState(BaseModel):
    purpose: str
    consented: bool | None = Field(
        description="what you last asked through this service: true (granted), false (withdrawn, opted out) or "
        "null (never asked here: the store's own records decide)")
    applied: bool = Field(description="whether the store has recorded it yet (stores do it at their next sync)")


class StoreConsentState(BaseModel):
    store: str
    purposes: list[PurposeState]


class ConsentState(BaseModel):
    stores: list[StoreConsentState]


class Health(BaseModel):
    status: Literal["ok"]
    schema_revision: str
