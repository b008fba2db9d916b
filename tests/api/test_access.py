"""An access request answered through each store's gate (Art. 15(1)): everything, and only theirs."""

from __future__ import annotations

import json

from siloguard.audit import AuditLog
from tests.api.conftest import Api
from tests.dsr.helpers import OTHER, STORES, SUBJECT


def test_access_answer_lists_every_category_purpose_retention_recipient_and_source(sqlite_api: Api) -> None:
    api = sqlite_api
    request, token = api.verified("access", SUBJECT)
    assert request["status"] == "completed"
    # The dpo may read it (before the subject downloads it: then it is deleted); the other subject may not.
    dpo_read = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.as_key("dpo"))
    assert dpo_read.status_code == 200
    assert SUBJECT not in dpo_read.text and "customer_number" not in dpo_read.text  # the stored answer: pseudonyms only
    _, other_token = api.verified("consent", OTHER, consent=[{"purpose": "personalize.profiling", "action": "grant"}])
    assert api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(other_token)).status_code == 404
    reply = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(token))
    assert reply.status_code == 200
    answer = reply.json()["answer"]
    per_store = {s["store"]: s for s in answer["stores"]}
    assert set(per_store) == set(STORES)
    for i, store in enumerate(STORES):
        held = per_store[store]
        assert held["records"] == 2 + i == len(held["data"])
        categories = {c["category"] for c in held["categories"]}
        assert {"user.behavior.purchase_history", "user.unique_id", "user.contact.address.country"} <= categories
        assert {row["customer_id"] for row in held["data"]} == {SUBJECT}  # their own number, not the store's pseudonym
    assert {p["purpose"]: p["lawful_basis"] for p in answer["purposes"]}["personalize.profiling"] == "consent"
    assert answer["retention"] == "P6Y" and answer["recipients"] and answer["source"]
    assert answer["subject"] == {"customer_number": SUBJECT, "request": request["id"], "jurisdiction": "gdpr"}
    assert "Art. 22" in answer["profiling"] and any("Art. 77" in r for r in answer["rights"])  # Art. 15(1)(h), (f)
    consent = {s["store"]: {p["purpose"]: p for p in s["purposes"]} for s in answer["consent"]}
    assert set(consent) == set(STORES) and "personalize.profiling" in consent[STORES[0]]
    text = json.dumps(answer)
    assert OTHER not in text and "v1." not in text

    assert api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(token)).status_code == 410  # downloaded

    log = AuditLog.open(api.env.settings)
    try:
        gate = [s.event for s in log.iter_events() if s.event.actor.startswith("subject:") and s.event.decision == "allow"]
    finally:
        log.close()
    assert len(gate) == len(STORES)  # one gate decision per store, the subject as a pseudonym
    assert {e.store for e in gate} == set(STORES)
