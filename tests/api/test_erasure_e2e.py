"""End to end: a subject's erasure across three stores, with receipts, exclusion and audit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from siloguard.audit import AuditLog
from siloguard.audit.heads import generate_keypair, load_public_key
from siloguard.clients.gating import gated_training_frame, store_consent, store_keys
from siloguard.clients.private import save_private_users, stored_subjects
from siloguard.data.loader import load_clean
from siloguard.dsr.sync import sync_store
from siloguard.privacy.keys import SubjectVault
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.recommender.model import PrivateUsers
from tests.api.conftest import build_api
from tests.dsr.helpers import OTHER, STORES, SUBJECT
from tests.storage.databases import BACKENDS, fresh_database


def _prepare_stores(settings) -> None:  # type: ignore[no-untyped-def]
    """What a trained run leaves in each store: consent to train, embeddings, subject keys."""
    for store in STORES:
        keys = store_keys(settings, store)
        customers = ["17850", "13047", "12583"]
        store_consent(settings, store).record(customers, "personalize.profiling", "grant", source="store")
        pseudonymiser = Pseudonymiser(keys)
        names = pd.Index([pseudonymiser.pseudonym(c) for c in customers])
        save_private_users(settings, store, names, PrivateUsers(len(names), 4))
        SubjectVault(keys).encrypt(SUBJECT, "email", "someone@example.com")
        SubjectVault(keys).encrypt(OTHER, "email", "other@example.com")


def _training_customers(settings, store: str) -> set[str]:  # type: ignore[no-untyped-def]
    frame, _ = load_clean(settings.work_dir / "stores" / f"{store}.csv")
    gated = gated_training_frame(settings, store, frame)
    pseudonymiser = Pseudonymiser(store_keys(settings, store))
    by_pseudonym = {pseudonymiser.pseudonym(c): c for c in ("17850", "13047", "12583")}
    return {by_pseudonym[p] for p in gated.frame["customer_id"].unique()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_erasure_reaches_every_store_and_completes_only_with_every_signed_receipt(tmp_path: Path, backend: str) -> None:
    generate_keypair(tmp_path / "audit.key", tmp_path / "audit.pub")
    with fresh_database(backend, tmp_path) as url:
        for api in build_api(tmp_path, url):
            settings = api.env.settings
            _prepare_stores(settings)
            assert all(SUBJECT in _training_customers(settings, s) for s in STORES)

            request = api.submit("erasure", SUBJECT, contact="someone@example.com")
            assert request["status"] == "verifying"
            reply = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"])})
            assert reply.status_code == 200
            token = reply.json()["subject_token"]
            assert reply.json()["request"]["status"] == "in_progress"

            # The service holds no store key: nothing changes in a store until it syncs.
            for store in STORES:
                assert api.env.rows_of(store, SUBJECT) > 0

            # Two stores sync: from then on their training excludes the subject; not complete yet.
            for store in STORES[:2]:
                api.client.headers.update(api.as_key(f"store_{store}"))
                assert len(sync_store(api.client, settings, store)) == 1
                assert _training_customers(settings, store) == {"13047", "12583"}
            api.client.headers.clear()
            assert api.client.get(f"/v1/requests/{request['id']}", headers=api.auth(token)).json()["status"] == "in_progress"

            api.client.headers.update(api.as_key("store_gamma"))
            sync_store(api.client, settings, "gamma")
            assert sync_store(api.client, settings, "gamma") == []  # nothing left to do
            api.client.headers.clear()

            done = api.client.get(f"/v1/requests/{request['id']}", headers=api.auth(token)).json()
            assert done["status"] == "completed"
            erased = {e["store"]: e for e in done["result"]["erased"]}
            assert set(erased) == set(STORES)
            for i, store in enumerate(STORES):
                assert erased[store]["rows_erased"] == 2 + i and erased[store]["rows_remaining"] == 0
                assert erased[store]["embeddings_erased"] == 1 and erased[store]["key_destroyed"] is True
                assert api.env.rows_of(store, SUBJECT) == 0 and api.env.rows_of(store, OTHER) == 2 + i
                keys = store_keys(settings, store)
                assert not SubjectVault(keys).has_key(SUBJECT) and SubjectVault(keys).has_key(OTHER)
                assert Pseudonymiser(keys).pseudonym(SUBJECT) not in stored_subjects(settings, store)
                assert _training_customers(settings, store) == {"13047", "12583"}
            assert "differential privacy" in done["result"]["dp_bound"]["statement"]

            log = AuditLog.open(settings)
            try:
                actions = [s.event.action for s in log.iter_events() if s.event.request == request["id"]]
                for step in ("dsr.received", "dsr.verifying", "dsr.verified", "dsr.in_progress", "dsr.completed"):
                    assert actions.count(step) == 1, step
                assert actions.count("dsr.receipt") == 3
                bodies = b"".join(s.body for s in log.iter_events())
                assert SUBJECT.encode() not in bodies and b"example.com" not in bodies
                log.sign_head()
                report = log.verify(load_public_key(tmp_path / "audit.pub"))
                assert report.tree_size == log.size() and report.uncovered == 0
            finally:
                log.close()
