"""Receipts: signed by the store's derived key, checked against its registered public key."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from siloguard.clients.gating import store_keys
from siloguard.dsr.errors import DsrInvalid
from siloguard.dsr.machine import STATUSES, TERMINAL, TRANSITIONS, allowed
from siloguard.dsr.receipts import Receipt, public_key_bytes, register_store_key, sign_receipt, verify_receipt
from tests.api.conftest import Api, build_api
from tests.dsr.helpers import SUBJECT
from tests.storage.databases import fresh_database


def _receipt(**changes: object) -> Receipt:
    fields = dict(task="task-1", request="dsr-1", store="alpha", rows_erased=3, rows_remaining=0,
                  embeddings_erased=1, key_destroyed=True, erased_at=datetime.now(timezone.utc).isoformat())
    fields.update(changes)
    return Receipt(**fields)  # type: ignore[arg-type]


def test_a_receipt_verifies_only_unchanged_and_only_with_its_stores_key(tmp_path: Path) -> None:
    from tests.dsr.helpers import make_env

    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    alpha, beta = store_keys(env.settings, "alpha"), store_keys(env.settings, "beta")
    receipt = _receipt()
    text = receipt.canonical().decode()
    signature = sign_receipt(alpha, receipt)
    assert verify_receipt(public_key_bytes(alpha), text, signature) == receipt
    with pytest.raises(DsrInvalid, match="signature"):
        verify_receipt(public_key_bytes(beta), text, signature)
    with pytest.raises(DsrInvalid, match="signature"):
        verify_receipt(public_key_bytes(alpha), text.replace('"rows_remaining":0', '"rows_remaining":1'), signature)
    with pytest.raises(DsrInvalid, match="canonical"):
        verify_receipt(public_key_bytes(alpha), text.replace(",", ", "), signature)
    # The key is derived from the store's master key: the same on every call, no extra file.
    assert public_key_bytes(store_keys(env.settings, "alpha")) == public_key_bytes(alpha)


def test_the_state_machine_allows_only_forward_moves_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    for status in TERMINAL:
        assert not TRANSITIONS[status]
    assert allowed("received", "verifying") and allowed("in_progress", "extended") and allowed("extended", "completed")
    assert not allowed("verifying", "completed") and not allowed("completed", "in_progress") and not allowed("extended", "extended")


@pytest.fixture
def erasure(tmp_path: Path) -> Iterator[tuple[Api, str, dict[str, str]]]:
    with fresh_database("sqlite", tmp_path) as url:
        for api in build_api(tmp_path, url):
            request, _ = api.verified("erasure", SUBJECT)
            task = next(t for t in api.app_service().tasks(request["id"]) if t["store"] == "alpha")
            yield api, request["id"], task


def _post(api: Api, task_id: str, receipt: Receipt, signer: str = "alpha", key: str = "store_alpha") -> int:
    signature = sign_receipt(store_keys(api.env.settings, signer), receipt)
    body = {"receipt": receipt.canonical().decode(), "signature": base64.b64encode(signature).decode()}
    return api.client.post(f"/v1/stores/alpha/tasks/{task_id}/receipt", json=body, headers=api.as_key(key)).status_code


def test_the_api_refuses_forged_mismatched_or_incomplete_receipts(erasure: tuple[Api, str, dict[str, str]]) -> None:
    api, request_id, task = erasure
    good = _receipt(task=task["id"], request=request_id)
    assert _post(api, task["id"], good, signer="beta") == 422  # signed by another store's key
    assert _post(api, task["id"], _receipt(task=task["id"], request="dsr-other")) == 422
    assert _post(api, task["id"], _receipt(task=task["id"], request=request_id, rows_remaining=2)) == 422
    assert _post(api, task["id"], _receipt(task=task["id"], request=request_id, key_destroyed=False)) == 422
    assert api.app_service().get(request_id)["status"] == "in_progress"
    assert _post(api, task["id"], good) == 200
    assert _post(api, task["id"], good) == 409  # one receipt per task


def test_a_rotated_store_key_must_be_registered_explicitly(erasure: tuple[Api, str, dict[str, str]]) -> None:
    api, _, _ = erasure
    with pytest.raises(DsrInvalid, match="another receipt key"):
        register_store_key(api.engine, "alpha", public_key_bytes(store_keys(api.env.settings, "beta")))
