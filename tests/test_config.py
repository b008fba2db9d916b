"""Settings at the Flower boundary: a store's own environment beats the coordinator's run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from siloguard.config import Settings

COORDINATOR_DB = "sqlite:///coordinator/siloguard.db"
STORE_DB = "postgresql+psycopg://store@127.0.0.1:5432/store"


def _run_config(tmp_path: Path) -> dict[str, object]:
    return {
        "work-dir": str(tmp_path / "coordinator"),
        "database.url": COORDINATOR_DB,
        "keys.root": str(tmp_path / "coordinator" / "keys"),
        "federation.rounds": 3,
    }


def test_when_the_store_sets_its_database_then_the_run_config_does_not_override_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", STORE_DB)
    monkeypatch.setenv("SILOGUARD_KEYS__ROOT", str(tmp_path / "store-keys"))
    monkeypatch.setenv("SILOGUARD_WORK_DIR", str(tmp_path / "store-site"))
    store = Settings.from_run_config(_run_config(tmp_path), store=True)
    assert store.database.url == STORE_DB
    assert store.keys.root == tmp_path / "store-keys" and store.work_dir == tmp_path / "store-site"
    assert store.federation.rounds == 3  # federation-wide settings still come from the run
    coordinator = Settings.from_run_config(_run_config(tmp_path))
    assert coordinator.database.url == COORDINATOR_DB


def test_when_the_store_sets_nothing_then_the_run_config_is_its_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    store = Settings.from_run_config(_run_config(tmp_path), store=True)
    assert store.database.url == COORDINATOR_DB and store.work_dir == tmp_path / "coordinator"


def test_when_the_environment_sets_a_federation_setting_then_the_run_config_still_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SILOGUARD_FEDERATION__ROUNDS", "9")
    assert Settings.from_run_config(_run_config(tmp_path), store=True).federation.rounds == 3


def _site(tmp_path: Path) -> Path:
    from siloguard.clients.site import StoreSite
    from tests.conftest import write_tiny_retail

    retail = write_tiny_retail(tmp_path / "retail.csv")
    return StoreSite.init(tmp_path / "site", "store-31782", retail, country="Germany").directory


def _node(site: Path, tmp_path: Path):  # noqa: ANN202 - a Flower Context of a deployed SuperNode
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=1, node_config={"site": str(site)}, state=RecordDict(), run_config=_run_config(tmp_path))


def test_when_a_store_on_its_site_sets_its_database_then_its_client_app_uses_it_not_the_run_configs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from siloguard.clients.app import build_client_app, node_store, store_settings

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    site = _site(tmp_path)
    monkeypatch.setenv("SILOGUARD_DATABASE__URL", STORE_DB)
    settings = store_settings(_node(site, tmp_path))
    assert settings.database.url == STORE_DB  # the run config said COORDINATOR_DB
    assert settings.keys.root == site / "keys" and settings.work_dir == site
    assert settings.federation.rounds == 3
    # Also when the ClientApp is built without settings (a deployed node, `flwr run`).
    assert build_client_app() is not None and node_store(_node(site, tmp_path))[0] == "store-31782"


def test_when_a_store_on_its_site_sets_nothing_then_its_site_decides_never_the_run_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from siloguard.clients.app import store_settings

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    site = _site(tmp_path)
    settings = store_settings(_node(site, tmp_path))
    assert settings.database.url == f"sqlite:///{site / 'siloguard.db'}"
    assert settings.keys.root == site / "keys"
    assert str(tmp_path / "coordinator") not in settings.model_dump_json()


def test_a_copied_run_reads_its_own_files(tmp_path: Path) -> None:
    """run.json holds paths relative to the run, so a copied run never reads the original."""
    import json
    import shutil

    from siloguard.runs import RunManifest

    original = tmp_path / "original"
    (original / "stores").mkdir(parents=True)
    (original / "stores" / "alpha.csv").write_text("x\n")
    (original / "catalogue.json").write_text('{"stock_codes": []}')
    manifest = RunManifest(directory=original, stores={"alpha": original / "stores" / "alpha.csv"},
                           catalogue=original / "catalogue.json", split_date="2011-01-01", end_date="2011-02-01",
                           jurisdictions={"alpha": "ccpa"})
    (original / "run.json").write_text(json.dumps(manifest.to_json()))
    assert str(original) not in (original / "run.json").read_text()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    read = RunManifest.read(copy)
    assert read.stores == {"alpha": copy / "stores" / "alpha.csv"} and read.catalogue == copy / "catalogue.json"
    assert read.jurisdictions == {"alpha": "ccpa"} and read.require_catalogue().is_file()


def test_a_damaged_run_manifest_is_refused_with_the_fix(tmp_path: Path) -> None:
    from siloguard.errors import ConfigError
    from siloguard.runs import RunManifest

    (tmp_path / "run.json").write_text('{"stores": {"alpha": "stores/alpha.csv"}, "jurisdictions": {"alpha": "eu"}}')
    with pytest.raises(ConfigError, match="prepare the run again"):
        RunManifest.read(tmp_path)
    with pytest.raises(ConfigError, match="no prepared run"):
        RunManifest.read(tmp_path / "nowhere")
