"""A store's side of data-subject requests: pull its tasks and do them on its own site.

Consent effects and access tasks are done with the store's own keys and posted as ``done``
(:func:`_do_task`); erasure is described here in full:

Before it touches any data, :func:`sync_store` checks that the receipt key the API holds for
the store is the one this store signs with (its keys under ``settings.keys.root``, never
created here): with the wrong keys root every receipt would be refused *after* the rows were
gone. Then for each pending task the store, on its own machine and with its own keys:

1. claims the task (``POST .../claim``): only a live task is claimed (a request the DPO
   denied meanwhile has its tasks cancelled: nothing is erased for it), and while the claim
   holds (``api.claim_lease_seconds``) the request cannot be denied under the store's feet;
2. rewrites its silo (``<work_dir>/stores/<store>.csv``) without the subject's rows,
   atomically, after writing the count to its erasure journal (``store_erasures``);
3. re-reads the silo and counts the subject's rows: the receipt states this count, which must
   be zero for the API to accept it;
4. removes the subject's private user embedding (:func:`siloguard.clients.private.erase_subjects`),
   the subject from the store's campaign records
   (:func:`siloguard.clients.marketing.forget_campaign_members`), the subject's consent events and adds the subject to its suppression list (keyed
   reference, no id), so no later preparation or import brings them back;
5. destroys the subject's data key (crypto-shredding, :meth:`SubjectVault.shred`);
6. signs a :class:`~siloguard.dsr.receipts.Receipt` with its receipt key and posts it.

Every step is idempotent, so a sync interrupted at any point, or refused, is simply run
again; the journal makes the retry's receipt report what the first attempt erased. A refused
receipt does not stop the store's other tasks.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pandas as pd
import sqlalchemy as sa

from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.dsr.errors import DsrError
from siloguard.dsr.receipts import Receipt, public_key_bytes, sign_receipt
from siloguard.dsr.service import normalise_ref
from siloguard.errors import ConfigError, SiloguardError

__all__ = ["ErasureOutcome", "erase_subject", "existing_store_keys", "sync_store"]


@dataclass(frozen=True)
class ErasureOutcome:
    rows_erased: int
    rows_remaining: int
    embeddings_erased: int
    key_destroyed: bool


def _ids(column: pd.Series) -> pd.Series:
    text = column.astype(str).str.strip()
    return text.where(~(text.str.endswith(".0") & text.str[:-2].str.isdigit()), text.str[:-2])


def existing_store_keys(settings: Settings, store: str):  # noqa: ANN201 - StoreKeys, imported lazily
    """The store's keys under ``settings.keys.root``; an error (never new keys) if there are none."""
    from siloguard.privacy.keys import existing_store_keys

    return existing_store_keys(settings.keys.root, store)


def _journal(settings: Settings):  # noqa: ANN202 - the run database's engine (one per process)
    from siloguard.clients.gating import _registry

    return _registry(settings.database.url).engine


def erase_subject(settings: Settings, store: str, customer_ref: str, *, task: str | None = None, request: str | None = None) -> ErasureOutcome:
    """Erase one customer from the store's silo, embeddings, consent and keys; count what remains.

    With ``task``, the counts are kept in the store's erasure journal first, so a retry (after
    a refused receipt, a crash) reports what the first attempt erased rather than zero.
    """
    from siloguard.clients.gating import silo_path, store_consent, store_suppression
    from siloguard.clients.marketing import forget_campaign_members
    from siloguard.clients.private import erase_subjects
    from siloguard.data.loader import load_transactions
    from siloguard.privacy.keys import SubjectVault
    from siloguard.privacy.pseudonyms import normalise_ids
    from siloguard.storage.orm import store_erasures

    if not customer_ref:
        raise ConfigError("an erasure task without a customer reference: nothing to erase")
    ref = normalise_ref(customer_ref)
    keys = existing_store_keys(settings, store)
    path = silo_path(settings, store)
    engine = _journal(settings)
    held = None
    if task is not None:
        with engine.connect() as conn:
            held = conn.execute(sa.select(store_erasures).where(store_erasures.c.task_id == task)).mappings().first()
    # Read as text so every other row is written back exactly as it was.
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "CustomerID" not in raw.columns:
        raise ConfigError(f"store {store!r}: the silo {path} has no CustomerID column")
    mine = (_ids(raw["CustomerID"]) == ref).to_numpy()
    found = int(mine.sum())
    rows_erased = max(found, held["rows_erased"] if held else 0)
    if task is not None:
        _write_journal(engine, task, store, request or "", rows_erased=rows_erased,
                       embeddings=held["embeddings_erased"] if held else 0, key_destroyed=False, update=held is not None)
    if found:
        write_atomic(path, raw.loc[~mine].to_csv(index=False).encode())
    remaining = int((normalise_ids(load_transactions(path)["customer_id"]) == ref).sum())
    embeddings = max(erase_subjects(settings, store, [ref]), held["embeddings_erased"] if held else 0)
    forget_campaign_members(settings, store, [ref])  # the store's campaign records (pseudonyms, arms)
    store_suppression(settings, store).add([ref])
    store_consent(settings, store).forget([ref])
    vault = SubjectVault(keys)
    vault.shred(ref)
    destroyed = not vault.has_key(ref)
    if task is not None:
        _write_journal(engine, task, store, request or "", rows_erased=rows_erased, embeddings=embeddings,
                       key_destroyed=destroyed, update=True)
    return ErasureOutcome(rows_erased, remaining, embeddings, key_destroyed=destroyed)


def _write_journal(engine: Any, task: str, store: str, request: str, *, rows_erased: int, embeddings: int,
                   key_destroyed: bool, update: bool) -> None:
    from siloguard.storage.orm import store_erasures

    values = {"rows_erased": rows_erased, "embeddings_erased": embeddings, "key_destroyed": key_destroyed,
              "erased_at": datetime.now(timezone.utc)}
    with engine.begin() as conn:
        if update:
            conn.execute(store_erasures.update().where(store_erasures.c.task_id == task).values(**values))
        else:
            conn.execute(store_erasures.insert().values(task_id=task, store=store, request_id=request, **values))


def check_receipt_key(client: httpx.Client, keys: Any, store: str) -> None:
    """Refuse to erase anything unless the API holds this store's receipt key."""
    reply = client.get(f"/v1/stores/{store}/receipt-key")
    _raise_for(reply)
    try:
        registered = base64.b64decode(reply.json()["public_key"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise DsrError("the API's answer for the store's receipt key is malformed; nothing was erased") from None
    if registered != public_key_bytes(keys):
        raise ConfigError(
            f"the API holds another receipt key for store {store!r} than the keys under {keys.keystore.root.resolve()}: "
            "nothing was erased. Use the store's own key directory (SILOGUARD_KEYS__ROOT), or, if the store's keys "
            f"really changed, register their key with `siloguard keys create --role store_operator --store {store} --rotate-receipt-key`"
        )


def sync_store(client: httpx.Client, settings: Settings, store: str) -> list[dict[str, Any]]:
    """Do every pending erasure task of ``store`` through the API at ``client``; returns what was done.

    A task is claimed right before its subject is erased (``POST .../claim``): only a
    ``claimed`` task is erased, and while the claim holds the request cannot be denied. A
    refused receipt does not stop the other tasks: it is reported (``refused``), the erasure
    journal keeps the counts for the retry, and :class:`DsrError` is raised at the end.
    """
    keys = existing_store_keys(settings, store)
    check_receipt_key(client, keys, store)
    response = client.get(f"/v1/stores/{store}/tasks")
    _raise_for(response)
    done: list[dict[str, Any]] = []
    refused: list[str] = []
    for task in response.json()["tasks"]:
        if not task.get("customer_ref"):
            continue  # nothing names a subject (the service closed it meanwhile)
        if task.get("kind", "erasure") != "erasure":
            try:
                done.append(_do_task(client, settings, store, task))
            except (SiloguardError, DsrError) as exc:  # the next sync does it again
                refused.append(f"{task['id']}: {task.get('kind')} not done: {exc}")
            continue
        claim = client.post(f"/v1/stores/{store}/tasks/{task['id']}/claim")
        try:
            _raise_for(claim)
        except DsrError as exc:  # e.g. rate limited: this task waits for the next sync
            refused.append(f"{task['id']}: not claimed: {exc}")
            continue
        if claim.json()["status"] != "claimed":
            done.append({"task": task["id"], "request": task["request_id"], "skipped": claim.json()["status"]})
            continue
        try:
            outcome = erase_subject(settings, store, task["customer_ref"], task=task["id"], request=task["request_id"])
        except SiloguardError as exc:  # the journal keeps what was done; the next sync retries
            refused.append(f"{task['id']}: erasure failed: {exc}")
            continue
        receipt = Receipt(
            task=task["id"], request=task["request_id"], store=store,
            rows_erased=outcome.rows_erased, rows_remaining=outcome.rows_remaining,
            embeddings_erased=outcome.embeddings_erased, key_destroyed=outcome.key_destroyed,
            erased_at=datetime.now(timezone.utc).isoformat(),
        )
        signature = sign_receipt(keys, receipt)
        reply = client.post(
            f"/v1/stores/{store}/tasks/{task['id']}/receipt",
            json={"receipt": receipt.canonical().decode(), "signature": base64.b64encode(signature).decode()},
        )
        item = {"task": task["id"], "request": task["request_id"], "rows_erased": outcome.rows_erased,
                "embeddings_erased": outcome.embeddings_erased, "key_destroyed": outcome.key_destroyed}
        try:
            _raise_for(reply)
        except DsrError as exc:
            refused.append(f"{task['id']}: receipt refused: {exc}")
            item["refused"] = str(exc)
        done.append(item)
    if refused:
        error = DsrError(f"{len(refused)} task(s) not finished (run sync again; what was erased is in the journal): " + "; ".join(refused))
        error.done = done  # type: ignore[attr-defined]
        raise error
    return done


def _do_task(client: httpx.Client, settings: Settings, store: str, task: dict[str, Any]) -> dict[str, Any]:
    """An ``effects`` or ``access`` task, done on the store's own site with its own keys.

    effects: the consent events are recorded in the store's registry (an erased customer's are
    not: its suppression list); access: the store's part of the answer is built through its
    gate and, when the subject gave a key, sealed to it here, before it leaves the store.
    """
    ref = normalise_ref(task["customer_ref"])
    payload = task.get("payload") or {}
    answer = None
    if task["kind"] == "effects":
        from siloguard.clients.gating import store_consent

        consent = store_consent(settings, store)
        for event in payload.get("events", []):
            consent.record([ref], event["purpose"], event["event"], source=event.get("source", "api"))
        if payload.get("gpc"):
            consent.record_gpc(ref)
        item: dict[str, Any] = {"task": task["id"], "request": task["request_id"], "kind": "effects",
                                "events": len(payload.get("events", [])) + int(bool(payload.get("gpc")))}
    elif task["kind"] == "access":
        from siloguard.clients.access import access_report

        if payload.get("gpc"):  # Sec-GPC sent with the request: an opt-out of sale and sharing
            from siloguard.clients.gating import store_consent

            store_consent(settings, store).record_gpc(ref)
        part = access_report(settings, ref, [store])
        key = payload.get("answer_key")
        if key:
            from siloguard.dsr.sealed import part_id, public_key_from_text, seal_answer

            answer = json.dumps({"sealed": seal_answer(public_key_from_text(key), part, part_id(task["request_id"], store))})
        else:
            answer = json.dumps({"part": part}, default=str)
        item = {"task": task["id"], "request": task["request_id"], "kind": "access", "records": part["records"],
                "sealed": bool(key)}
    else:
        raise DsrError(f"a task of an unknown kind {task['kind']!r}: update siloguard on this store")
    reply = client.post(f"/v1/stores/{store}/tasks/{task['id']}/done", json={"answer": answer})
    _raise_for(reply)
    return item


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    error = DsrError(f"the API refused: {message}")
    error.status = response.status_code
    raise error
