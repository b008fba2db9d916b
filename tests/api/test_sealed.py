"""Access answers sealed to the subject's key: the service keeps ciphertext only, and only until download."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from siloguard.cli import app as cli_app
from siloguard.clients.gating import store_keys
from siloguard.dsr.errors import DsrInvalid
from siloguard.dsr.sealed import new_key_pair, open_answer, open_parts, public_key_from_text, seal_answer
from siloguard.privacy.pseudonyms import Pseudonymiser
from tests.api.conftest import Api
from tests.api.test_erasure_e2e import _prepare_stores
from tests.api.test_leaks import _scan_database
from tests.dsr.helpers import STORES, SUBJECT


def test_a_sealed_answer_opens_only_with_the_subjects_key_and_for_its_request() -> None:
    private, public = new_key_pair()
    sealed = seal_answer(public_key_from_text(public), {"records": 3}, "dsr-1")
    assert open_answer(private, sealed, "dsr-1") == {"records": 3}
    other, _ = new_key_pair()
    with pytest.raises(DsrInvalid):
        open_answer(other, sealed, "dsr-1")
    with pytest.raises(DsrInvalid):
        open_answer(private, sealed, "dsr-2")  # moved to another request
    tampered = dict(sealed, ciphertext=sealed["ciphertext"][:-4] + ("AAAA" if not sealed["ciphertext"].endswith("AAAA") else "BBBB"))
    with pytest.raises(DsrInvalid):
        open_answer(private, tampered, "dsr-1")
    for bad in ("", "bm90IGEga2V5", "A" * 88):
        with pytest.raises(DsrInvalid, match="P-256"):
            public_key_from_text(bad)


def test_when_the_subject_gives_a_key_then_the_service_holds_ciphertext_only_and_deletes_it_after_download(
    sqlite_api: Api, tmp_path: Path
) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    marker = Pseudonymiser(store_keys(api.env.settings, "alpha")).pseudonym(SUBJECT)
    runner = CliRunner()
    made = runner.invoke(cli_app, ["answer", "keygen", "--out", str(tmp_path / "me.pem")])
    assert made.exit_code == 0 and (tmp_path / "me.pem").stat().st_mode & 0o077 == 0
    public = made.stdout.strip()

    request = api.submit("access", SUBJECT)
    bad = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"]), "answer_key": "A" * 88})
    assert bad.status_code == 422 and "P-256" in bad.json()["error"]["message"]
    assert api.app_service().get(request["id"])["status"] == "verifying"  # the code was not spent
    verified = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"]), "answer_key": public})
    assert verified.status_code == 200
    token = api.auth(verified.json()["subject_token"])
    tasks = api.app_service().tasks(request["id"])
    assert {t["kind"] for t in tasks} == {"access"} and all(json.loads(t["payload"])["answer_key"] == public for t in tasks)
    assert api.client.get(f"/v1/requests/{request['id']}/access", headers=token).status_code == 409  # stores not done yet
    done = api.sync()  # each store seals its part to the subject's key before it leaves the store
    assert all(d["sealed"] for d in done)
    assert _scan_database(api.engine, {"pseudonym": re.compile(re.escape(marker))}) == []  # ciphertext only
    # A store cannot hand in its part in clear when the subject gave a key.
    other = api.submit("access", SUBJECT)
    api.client.post(f"/v1/requests/{other['id']}/verify", json={"code": api.code(other["id"]), "answer_key": public})
    task = next(t for t in api.app_service().tasks(other["id"]) if t["store"] == "alpha")
    clear = {"part": {"stores": [{"store": "alpha", "records": 1, "data": [{"customer_id": marker}]}], "records": 1}}
    refused = api.client.post(f"/v1/stores/alpha/tasks/{task['id']}/done", json={"answer": json.dumps(clear)},
                              headers=api.as_key("store_alpha"))
    assert refused.status_code == 422 and "sealed" in refused.json()["error"]["message"]
    assert _scan_database(api.engine, {"pseudonym": re.compile(re.escape(marker))}) == []

    reply = api.client.get(f"/v1/requests/{request['id']}/access", headers=token)
    assert reply.status_code == 200 and "sealed" in reply.json() and marker not in reply.text
    (tmp_path / "answer.json").write_text(reply.text)
    opened = runner.invoke(cli_app, ["answer", "open", str(tmp_path / "answer.json"), "--key", str(tmp_path / "me.pem")])
    assert opened.exit_code == 0, opened.output
    assert json.loads(opened.stdout)["records"] > 0 and marker in opened.stdout
    # Downloaded: gone from the service.
    assert api.client.get(f"/v1/requests/{request['id']}/access", headers=token).status_code == 410
    assert "ciphertext" not in (api.app_service().get(request["id"])["result"] or "")


def test_without_a_key_the_plaintext_answer_is_kept_only_until_the_subject_downloads_it(sqlite_api: Api) -> None:
    api = sqlite_api
    _prepare_stores(api.env.settings)
    request, token = api.verified("access", SUBJECT)
    dpo = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.as_key("dpo"))
    assert dpo.status_code == 200 and "answer" in dpo.json()  # the DPO reading it does not delete it
    first = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(token))
    assert first.status_code == 200 and first.json()["answer"]["records"] > 0
    assert api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(token)).status_code == 410


def test_an_answer_key_belongs_to_an_access_request(sqlite_api: Api) -> None:
    api = sqlite_api
    _, public = new_key_pair()
    request = api.submit("erasure", SUBJECT)
    reply = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": api.code(request["id"]), "answer_key": public})
    assert reply.status_code == 422 and "access request" in reply.json()["error"]["message"]


def test_a_key_given_when_filing_binds_the_answer_so_whoever_holds_the_code_cannot_swap_it(sqlite_api: Api) -> None:
    from siloguard.dsr.notifier import read_outbox
    from siloguard.dsr.sealed import fingerprint

    api = sqlite_api
    _prepare_stores(api.env.settings)
    mine, my_public = new_key_pair()
    _, their_public = new_key_pair()
    request = api.submit("access", SUBJECT, answer_key=my_public)
    message = read_outbox(api.engine, request["id"])[-1]["body"]
    assert fingerprint(public_key_from_text(my_public)) in message  # the subject can tell it is their key
    code = api.code(request["id"])
    swapped = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": code, "answer_key": their_public})
    assert swapped.status_code == 422 and "filed" in swapped.json()["error"]["message"]
    verified = api.client.post(f"/v1/requests/{request['id']}/verify", json={"code": code})  # the code was not spent
    assert verified.status_code == 200
    api.sync()
    reply = api.client.get(f"/v1/requests/{request['id']}/access", headers=api.auth(verified.json()["subject_token"]))
    parts = reply.json()["sealed"]
    assert [p["store"] for p in parts] == sorted(STORES)
    assert open_parts(mine, parts, request["id"])["records"] > 0
    # A part is bound to its request and its store: passed off as another store's, it does not open.
    with pytest.raises(DsrInvalid):
        open_parts(mine, [{"store": parts[1]["store"], "sealed": parts[0]["sealed"]}], request["id"])
    refused = api.client.post("/v1/requests", json={"kind": "erasure", "customer_ref": SUBJECT, "answer_key": my_public})
    assert refused.status_code == 422 and "answer_key" in refused.json()["error"]["message"]  # only access requests take one
