"""A store's side of erasure: pull its tasks, erase, confirm, post a signed receipt.

For each pending task (:func:`sync_store`) the store, on its own machine and with its own
keys:

1. rewrites its silo (``<work_dir>/stores/<store>.csv``) without the subject's rows, atomically;
2. re-reads the silo and counts the subject's rows: the receipt states this count, which must
   be zero for the API to accept it;
3. removes the subject's private user embedding (:func:`siloguard.clients.private.erase_subjects`);
4. destroys the subject's data key (crypto-shredding, :meth:`SubjectVault.shred`);
5. signs a :class:`~siloguard.dsr.receipts.Receipt` with its receipt key and posts it.

Every step is idempotent, so a sync interrupted at any point is simply run again.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pandas as pd

from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.dsr.errors import DsrError
from siloguard.dsr.receipts import Receipt, sign_receipt
from siloguard.dsr.service import normalise_ref
from siloguard.errors import ConfigError

__all__ = ["ErasureOutcome", "erase_subject", "sync_store"]


@dataclass(frozen=True)
class ErasureOutcome:
    rows_erased: int
    rows_remaining: int
    embeddings_erased: int
    key_destroyed: bool


def _ids(column: pd.Series) -> pd.Series:
    text = column.astype(str).str.strip()
    return text.where(~(text.str.endswith(".0") & text.str[:-2].str.isdigit()), text.str[:-2])


def erase_subject(settings: Settings, store: str, customer_ref: str) -> ErasureOutcome:
    """Erase one customer from the store's silo, embeddings and keys; count what remains."""
    from siloguard.clients.gating import silo_path, store_keys
    from siloguard.clients.private import erase_subjects
    from siloguard.data.loader import load_transactions
    from siloguard.privacy.keys import SubjectVault
    from siloguard.privacy.pseudonyms import normalise_ids

    ref = normalise_ref(customer_ref)
    path = silo_path(settings, store)
    # Read as text so every other row is written back exactly as it was.
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "CustomerID" not in raw.columns:
        raise ConfigError(f"store {store!r}: the silo {path} has no CustomerID column")
    mine = (_ids(raw["CustomerID"]) == ref).to_numpy()
    erased = int(mine.sum())
    if erased:
        write_atomic(path, raw.loc[~mine].to_csv(index=False).encode())
    remaining = int((normalise_ids(load_transactions(path)["customer_id"]) == ref).sum())
    embeddings = erase_subjects(settings, store, [ref])
    vault = SubjectVault(store_keys(settings, store))
    vault.shred(ref)
    return ErasureOutcome(erased, remaining, embeddings, key_destroyed=not vault.has_key(ref))


def sync_store(client: httpx.Client, settings: Settings, store: str) -> list[dict[str, Any]]:
    """Do every pending erasure task of ``store`` through the API at ``client``; returns receipts posted."""
    from siloguard.clients.gating import store_keys

    response = client.get(f"/v1/stores/{store}/tasks")
    _raise_for(response)
    keys = store_keys(settings, store)
    posted = []
    for task in response.json()["tasks"]:
        outcome = erase_subject(settings, store, task["customer_ref"])
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
        _raise_for(reply)
        posted.append({"task": task["id"], "request": task["request_id"], "rows_erased": outcome.rows_erased,
                       "embeddings_erased": outcome.embeddings_erased, "key_destroyed": outcome.key_destroyed})
    return posted


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
