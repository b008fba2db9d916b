"""A store's part of the answer to an access request (GDPR Art. 15(1), CCPA right to know).

Built on the store's own site when it does an access task (``siloguard store sync``): the
store's rows about the subject pass its gate as the subject themself
(role ``data_subject``, purpose ``essential.legal_obligation``, action ``export``): the gate
checks every row is theirs, applies the data map's treatment (the customer id is shown as
the store's pseudonym, free text is scanned) and records the flow in the audit log. The
answer lists, per store, every category held with its columns, the purposes and lawful
bases the data map declares, the retention period, the recipients and the source, then the
records themselves.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pandas as pd

from siloguard.config import Settings
from siloguard.errors import DataError
# What every answer states besides the records (recipients, source, ...): policies.datamap.
from siloguard.policies.datamap import access_answer
from siloguard.policies.gate import Gate, Principal

__all__ = ["access_report"]

DATASET = "transactions"
PURPOSE = "essential.legal_obligation"


@lru_cache(maxsize=16)
def _gate(settings: Settings, store: str) -> Gate:
    from siloguard.audit import AuditLog
    from siloguard.audit.adapters import DecisionRecorderAdapter
    from siloguard.clients.gating import store_consent, store_keys, store_suppression
    from siloguard.policies.enforcer import PolicyEnforcer
    from siloguard.privacy.masking import Masker
    from siloguard.privacy.pseudonyms import Pseudonymiser

    keys = store_keys(settings, store)
    return Gate(
        store=store,
        enforcer=PolicyEnforcer(),
        consent=store_consent(settings, store),
        recorder=DecisionRecorderAdapter(AuditLog.open(settings)),
        pseudonymiser=Pseudonymiser(keys),
        masker=Masker.for_store(keys),
        suppression=(suppression := store_suppression(settings, store)),
        blind=suppression.blinder(),
    )


def _subject_rows(settings: Settings, store: str, customer_ref: str) -> pd.DataFrame:
    from siloguard.clients.gating import silo_path
    from siloguard.data.loader import clean, load_transactions
    from siloguard.privacy.pseudonyms import normalise_ids

    raw = load_transactions(silo_path(settings, store))
    ids = normalise_ids(raw["customer_id"])
    mine = raw.loc[(ids == customer_ref).to_numpy()]
    if mine.empty:
        return mine
    try:
        cleaned, _ = clean(mine)
    except DataError:  # every row of theirs is one cleaning drops (guest, cancelled, no price...)
        return mine.iloc[0:0]
    return cleaned


def access_report(settings: Settings, customer_ref: str, stores: list[str]) -> dict[str, Any]:
    """Everything held on the subject in every store, through each store's gate."""
    from siloguard.policies.datamap import load_datamaps

    datamap = load_datamaps()[DATASET]
    principal = Principal(id=f"subject:{customer_ref}", role="data_subject")
    out = []
    for store in stores:
        rows = _subject_rows(settings, store, customer_ref)
        if rows.empty:
            out.append({"store": store, "dataset": DATASET, "records": 0, "categories": [], "data": []})
            continue
        gated = _gate(settings, store).admit(principal, PURPOSE, DATASET, rows, action="export")
        categories: dict[str, list[str]] = {}
        for column in gated.frame.columns:
            categories.setdefault(datamap.columns[column].category, []).append(column)
        out.append(
            {
                "store": store,
                "dataset": DATASET,
                "records": int(gated.rows_out),
                "categories": [{"category": c, "columns": cols} for c, cols in sorted(categories.items())],
                "data": json.loads(gated.frame.to_json(orient="records", date_format="iso")),
            }
        )
    return access_answer(out, datamap)
