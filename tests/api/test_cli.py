"""``siloguard keys``, ``siloguard serve`` refusing an unmigrated database, ``store sync`` errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from siloguard.api.keys import authenticate_key, list_keys
from siloguard.cli import app
from siloguard.clients.gating import store_keys
from siloguard.storage import create_engine
from siloguard.storage.orm import api_keys, store_signing_keys
from tests.dsr.helpers import make_env

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", env.url)
    monkeypatch.setenv("SILOGUARD_KEYS__ROOT", str(env.settings.keys.root))
    monkeypatch.setenv("SILOGUARD_WORK_DIR", str(env.settings.work_dir))
    return env


def test_keys_are_shown_once_stored_as_hashes_listed_and_revoked(env) -> None:  # type: ignore[no-untyped-def]
    created = runner.invoke(app, ["keys", "create", "--role", "dpo", "--label", "dpo-laptop"])
    assert created.exit_code == 0, created.output
    text = created.stdout.strip().splitlines()[0]
    engine = create_engine(env.url)
    try:
        key = authenticate_key(engine, text)
        assert key is not None and key.role == "dpo" and key.store is None
        secret = text.split("_", 2)[2]  # sgk_<id>_<secret>; the secret may hold "_"
        with engine.connect() as conn:
            row = conn.execute(api_keys.select()).mappings().one()
        assert secret not in repr(dict(row)) and bytes(row["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
        assert [k.id for k in list_keys(engine)] == [key.id]
        listed = runner.invoke(app, ["keys", "list"])
        assert key.id in listed.stdout and text not in listed.stdout and "active" in listed.stdout
        assert runner.invoke(app, ["keys", "revoke", key.id]).exit_code == 0
        assert authenticate_key(engine, text) is None
        again = runner.invoke(app, ["keys", "revoke", key.id])
        assert again.exit_code == 2 and "no active key" in again.output
    finally:
        engine.dispose()


def test_a_store_key_registers_the_stores_receipt_key(env) -> None:  # type: ignore[no-untyped-def]
    store_keys(env.settings, "alpha")  # the store's own keys, under the keys root it points at
    assert runner.invoke(app, ["keys", "create", "--role", "store_operator", "--store", "alpha"]).exit_code == 0
    engine = create_engine(env.url)
    try:
        with engine.connect() as conn:
            stores = [r.store for r in conn.execute(store_signing_keys.select())]
    finally:
        engine.dispose()
    assert stores == ["alpha"]
    missing = runner.invoke(app, ["keys", "create", "--role", "store_operator"])
    assert missing.exit_code == 2 and "--store" in missing.output
    bad = runner.invoke(app, ["keys", "create", "--role", "root"])
    assert bad.exit_code == 2 and "unknown role" in bad.output


def test_serve_refuses_an_unmigrated_database_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--db", f"sqlite:///{tmp_path / 'empty.db'}", "--port", "1"])
    assert result.exit_code == 8
    assert "siloguard db upgrade" in result.output and "Traceback" not in result.output


def test_store_sync_needs_the_store_key_in_the_environment(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SILOGUARD_STORE_KEY", raising=False)
    result = runner.invoke(app, ["store", "sync", "--store", "alpha"])
    assert result.exit_code == 2 and "SILOGUARD_STORE_KEY" in result.output
    monkeypatch.setenv("SILOGUARD_STORE_KEY", "sgk_abcdefghijkl_" + "x" * 43)
    store_keys(env.settings, "alpha")
    unreachable = runner.invoke(app, ["store", "sync", "--store", "alpha", "--api", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 2 and "cannot reach the API" in unreachable.output


def test_a_store_gives_its_receipt_key_and_the_service_registers_it_without_the_stores_keys(  # type: ignore[no-untyped-def]
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from siloguard.clients.site import StoreSite
    from siloguard.dsr.receipts import public_key_bytes
    from tests.conftest import write_tiny_retail

    service_env = {k: v for k, v in __import__("os").environ.items() if k.startswith("SILOGUARD_")}
    with monkeypatch.context() as store_machine:  # the store's own environment: its site decides
        for name in service_env:
            store_machine.delenv(name)
        site = StoreSite.init(tmp_path / "site", "store-31782", write_tiny_retail(tmp_path / "t.csv"), country="Germany")
        printed = runner.invoke(app, ["store", "receipt-key", "--site", str(site.directory)])
        assert printed.exit_code == 0, printed.output
        key = printed.stdout.strip()
        assert base64.b64decode(key) == public_key_bytes(site.keys())
    # A store the run does not know, or a name no store can have, is refused.
    for wrong in ("store-99999", "fr_ance"):
        refused = runner.invoke(app, ["keys", "create", "--role", "store_operator", "--store", wrong, "--receipt-key", key])
        assert refused.exit_code == 2 and "--store" in refused.output
    run = env.settings.work_dir / "run.json"
    run.write_text(run.read_text().replace('"gamma"', '"gamma", "store-31782"'))  # the coordinator's run lists it
    # The service's keys root holds no key of this store: it registers what the store gave.
    assert not (env.settings.keys.root / "stores" / "store-31782").exists()
    bad = runner.invoke(app, ["keys", "create", "--role", "store_operator", "--store", "store-31782", "--receipt-key", "bm90LWEta2V5"])
    assert bad.exit_code != 0 and "store receipt-key" in bad.output
    missing = runner.invoke(app, ["keys", "create", "--role", "store_operator", "--store", "store-31782"])
    assert missing.exit_code != 0 and "--receipt-key" in missing.output
    made = runner.invoke(app, ["keys", "create", "--role", "store_operator", "--store", "store-31782", "--receipt-key", key])
    assert made.exit_code == 0, made.output
    engine = create_engine(env.url)
    try:
        with engine.connect() as conn:
            held = conn.execute(store_signing_keys.select().where(store_signing_keys.c.store == "store-31782")).mappings().one()
    finally:
        engine.dispose()
    assert bytes(held["public_key"]) == public_key_bytes(site.keys())
    assert not (env.settings.keys.root / "stores" / "store-31782").exists()


def test_the_privacy_service_of_a_one_machine_run_keeps_its_own_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from siloguard.runs import privacy_settings

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "run"
    (run / "coordinator").mkdir(parents=True)
    (run / "coordinator" / "run.json").write_text(json.dumps({"layout": "sites", "stores": ["germany"]}))
    settings = privacy_settings(run)
    assert settings.database.url == f"sqlite:///{(run / 'privacy' / 'siloguard.db').resolve()}"
    assert settings.keys.root == (run / "privacy" / "keys").resolve() and settings.work_dir == (run / "coordinator").resolve()
    made = runner.invoke(app, ["keys", "create", "--run", str(run), "--role", "dpo"])
    assert made.exit_code == 0, made.output
    assert (run / "privacy" / "siloguard.db").is_file() and not (run / "coordinator" / "siloguard.db").exists()
    nothing = runner.invoke(app, ["keys", "create", "--run", str(tmp_path / "nothere"), "--role", "dpo"])
    assert nothing.exit_code == 2 and "no run there" in nothing.output


def test_serve_without_a_run_warns_that_requests_wait_and_still_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from siloguard.storage import create_engine, upgrade_database

    url = f"sqlite:///{tmp_path / 'svc.db'}"
    engine = create_engine(url)
    upgrade_database(engine)
    engine.dispose()
    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(app))
    env = {"SILOGUARD_DATABASE__URL": url, "SILOGUARD_WORK_DIR": str(tmp_path / "nowhere"), "SILOGUARD_KEYS__ROOT": str(tmp_path / "keys")}
    result = CliRunner().invoke(app, ["serve", "--port", "8123"], env=env)
    assert result.exit_code == 0, result.output
    assert "warning: no run at" in result.stderr and "requests wait until the stores are known" in result.stderr
    assert "pass --run RUN" in result.stderr and "privacy centre at /" in result.stderr
    assert len(started) == 1
