"""A store's side of the queue: its tasks (erasure, consent effects, access), claims, receipt key,
signed erasure receipts and the answers of its other tasks."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter

from siloguard.api.deps import AuthzDep, CallerDep, ServiceDep, StoreId, TaskId, view
from siloguard.api.errors import ApiError
from siloguard.api.schemas import ReceiptBody, ReceiptKey, RequestView, TaskDone, TaskList, TaskStatus, TaskView

router = APIRouter()


@router.get("/v1/stores/{store}/tasks", response_model=TaskList, tags=["stores"])
def store_tasks(service: ServiceDep, authz: AuthzDep, store: StoreId, who: CallerDep) -> TaskList:
    """The store's pending tasks: erasures, consent effects and access answers (its store key only)."""
    authz.authorize(who, "fulfil", store=store)
    return TaskList(tasks=[TaskView(**t) for t in service.pending_tasks(store)])

@router.get("/v1/stores/{store}/tasks/{task_id}", response_model=TaskStatus, tags=["stores"])
def store_task(service: ServiceDep, authz: AuthzDep, store: StoreId, task_id: TaskId, who: CallerDep) -> TaskStatus:
    """Whether a task is still to be done: a store asks right before it erases anything."""
    authz.authorize(who, "fulfil", store=store)
    task = service.task_status(store, task_id)
    return TaskStatus(id=task["id"], request_id=task["request_id"], store=task["store"], status=task["status"])

@router.post("/v1/stores/{store}/tasks/{task_id}/claim", response_model=TaskStatus, tags=["stores"])
def claim_task(service: ServiceDep, authz: AuthzDep, store: StoreId, task_id: TaskId, who: CallerDep) -> TaskStatus:
    """Claim a task right before erasing: ``claimed`` means erase now (the request cannot be
    denied while the claim holds); ``cancelled`` or ``done`` means erase nothing."""
    authz.authorize(who, "fulfil", store=store)
    task = service.claim_task(store, task_id)
    return TaskStatus(id=task["id"], request_id=task["request_id"], store=task["store"], status=task["status"])

@router.get("/v1/stores/{store}/receipt-key", response_model=ReceiptKey, tags=["stores"])
def store_receipt_key(service: ServiceDep, authz: AuthzDep, store: StoreId, who: CallerDep) -> ReceiptKey:
    """The receipt key registered for the store: a store checks it is its own before erasing."""
    authz.authorize(who, "fulfil", store=store)
    return ReceiptKey(store=store, public_key=base64.b64encode(service.registered_key(store)).decode())

@router.post("/v1/stores/{store}/tasks/{task_id}/receipt", response_model=RequestView, tags=["stores"])
def post_receipt(service: ServiceDep, authz: AuthzDep, store: StoreId, task_id: TaskId, body: ReceiptBody, who: CallerDep) -> RequestView:
    """A signed receipt for an erasure task; the request completes with the last store's."""
    authz.authorize(who, "fulfil", store=store)
    try:
        signature = base64.b64decode(body.signature, validate=True)
    except (binascii.Error, ValueError):
        service.refuse_receipt(store, task_id, "malformed", actor=who.actor)
        raise ApiError(422, "invalid", "signature must be base64") from None
    row = service.post_receipt(store, task_id, body.receipt, signature, actor=who.actor)
    return view(row, service.clock())

@router.post("/v1/stores/{store}/tasks/{task_id}/done", response_model=RequestView, tags=["stores"])
def task_done(service: ServiceDep, authz: AuthzDep, store: StoreId, task_id: TaskId, body: TaskDone, who: CallerDep) -> RequestView:
    """The store did its consent-effects or access task (an access task carries the store's answer,
    sealed to the subject's key when they gave one); the request completes with the last store's."""
    authz.authorize(who, "fulfil", store=store)
    row = service.task_done(store, task_id, body.answer, actor=who.actor)
    return view(row, service.clock())
