"""A real deployment on loopback: SuperLink + three SuperNodes as processes, TLS, node auth.

One module-scoped deployment: ``siloguard pki init`` material, a SuperLink with TLS and
``--enable-supernode-auth``, three stores enrolled with ``siloguard store enroll`` and their
SuperNodes started with their own node keys. One federation of two DP rounds is submitted
with ``siloguard federate``; during round 2 one SuperNode is stopped (SIGTERM to its process
group, by pid). Every process is stopped by pid in the fixture's ``finally``.

Data is the tiny three-country file, so the whole module takes about a minute or two on two
busy cores; readiness is always polled with a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.config import Settings
from siloguard.deploy.pki import make_node_keys, node_keys
from siloguard.deploy.processes import (
    Started,
    flower_env,
    start,
    stop,
    superlink_command,
    supernode_command,
    wait_for_log,
    wait_for_port,
)
from siloguard.federation.registry import current_version, load_manifest, sha256_file
from tests.conftest import tiny_customers, write_consent, write_tiny_retail

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
STORES = ("france", "germany", "united-kingdom")
COUNTRIES = {"france": "France", "germany": "Germany", "united-kingdom": "United Kingdom"}
VICTIM = "germany"
PG_STORE = "germany"  # on its own PostgreSQL schema when SILOGUARD_TEST_DATABASE_URL is set
PG_ENV = "SILOGUARD_TEST_DATABASE_URL"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    settings: Settings  # the coordinator's
    env: dict[str, str]  # SILOGUARD_* of the coordinator's processes (SuperLink, federate)
    link: Started
    sites: dict[str, Path] = field(default_factory=dict)  # each store's own site
    store_env: dict[str, str] = field(default_factory=dict)  # SILOGUARD_* of the stores' processes
    nodes: dict[str, Started] = field(default_factory=dict)
    enroll_output: dict[str, str] = field(default_factory=dict)
    federate_exit: int | None = None
    federate_output: str = ""

    @property
    def cli_args(self) -> list[str]:
        d = self.settings.deploy
        return ["--root", str(d.root), "--port", str(d.port)]


def _audit_events(settings: Settings) -> list:
    from siloguard.audit import AuditLog

    log = AuditLog.open(settings, signer=False)
    try:
        return [stored.event for stored in log.iter_events()]
    finally:
        log.close()


def _store_files(retail: Path, out: Path) -> dict[str, Path]:
    """Each store's own export (the tiny file cut by country: each organisation holds its part)."""
    import pandas as pd

    frame = pd.read_csv(retail, dtype=str, keep_default_na=False)
    out.mkdir()
    files = {}
    for store, country in COUNTRIES.items():
        path = out / f"{store}.csv"
        frame[frame["Country"] == country].to_csv(path, index=False)
        files[store] = path
    return files


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("deploy")
    retail = write_tiny_retail(tmp / "tiny.csv")
    consent = write_consent(tmp / "consent.csv", tiny_customers(retail))
    files = _store_files(retail, tmp / "exports")
    # Federation-wide settings every process shares (the run config carries only the keys
    # pyproject declares). Nothing store-local: each store's database and keys are its site's.
    shared = {
        "data": {"uk_stores": 1, "min_store_customers": 5, "test_weeks": 3},
        "model": {"dim": 8, "hidden": 4, "cutoffs": 2, "batch_size": 16, "local_epochs": 1},
        "privacy": {"enabled": True, "sample_rate": 0.5, "epsilon_cap": 50.0},
    }
    store_env = {f"SILOGUARD_{section.upper()}__{key.upper()}": str(value)
                 for section, values in shared.items() for key, value in values.items()}
    coordinator = tmp / "coordinator"
    env = {**store_env, "SILOGUARD_DATABASE__URL": f"sqlite:///{coordinator / 'siloguard.db'}",
           "SILOGUARD_KEYS__ROOT": str(coordinator / "keys")}
    settings = Settings.build(
        work_dir=coordinator,
        federation={"rounds": 2, "min_stores": 2},
        deploy={"root": tmp / "deploy", "port": _free_port(), "connect_timeout": 60.0},
        database={"url": env["SILOGUARD_DATABASE__URL"]},
        keys={"root": coordinator / "keys"},
        **shared,
    )
    runner = CliRunner()
    result = runner.invoke(app, ["pki", "init", "--root", str(settings.deploy.root), "--host", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    coordinator.mkdir()
    result = runner.invoke(app, ["db", "upgrade"], env=env)  # the coordinator's own database
    assert result.exit_code == 0, result.output
    pg_base = os.environ.get(PG_ENV)
    schema = None
    sites = {}
    for store, path in files.items():
        # Each store creates its own site; germany keeps its database on its own PostgreSQL
        # schema when a server is configured (CI), the others in SQLite files in their sites.
        extra: list[str] = []
        if store == PG_STORE and pg_base:
            schema = "sgdeploy_" + secrets.token_hex(4)
            admin = sa.create_engine(pg_base)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            admin.dispose()
            url = sa.engine.make_url(pg_base).update_query_dict({"options": f"-csearch_path={schema}"})
            extra = ["--database", url.render_as_string(hide_password=False)]
        sites[store] = tmp / "sites" / store
        result = runner.invoke(app, ["store", "init", store, "--site", str(sites[store]), "--data", str(path),
                                     "--country", COUNTRIES[store], "--consent", str(consent), *extra],
                               env={k: None for k in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT")})
        assert result.exit_code == 0, result.output

    link = start("superlink", superlink_command(settings), tmp / "logs" / "superlink.log",
                 flower_env(settings, env), cwd=tmp)
    dep = Deployment(settings, env, link, sites=sites, store_env=store_env)
    try:
        wait_for_port("127.0.0.1", settings.deploy.port, time.monotonic() + 60, link)
        for store in STORES:
            result = runner.invoke(app, ["store", "enroll", store, *dep.cli_args], env=env)
            assert result.exit_code == 0, result.output
            dep.enroll_output[store] = result.output
        for store in STORES:
            command = supernode_command(settings, store, None, runtime_port=_free_port(), site=sites[store])
            dep.nodes[store] = start(f"supernode {store}", command, tmp / "logs" / f"{store}.log",
                                     _store_process_env(settings, store_env), cwd=tmp)
        for node in dep.nodes.values():
            wait_for_log(node, r"SuperNode ID: \d+", time.monotonic() + 60)
        yield dep
    finally:
        for node in dep.nodes.values():
            stop(node)
        stop(link)
        if schema is not None:
            admin = sa.create_engine(pg_base)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            admin.dispose()


def _store_process_env(settings: Settings, store_env: dict[str, str]) -> dict[str, str]:
    """A store's process environment: nothing of the coordinator's database or keys."""
    env = flower_env(settings, store_env)
    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def federated(deployment: Deployment) -> Deployment:
    """``siloguard federate`` (2 DP rounds); the victim's SuperNode is stopped once it receives round 2's training."""
    dep = deployment
    victim = dep.nodes[VICTIM]
    outcome: dict[str, object] = {}

    def submit() -> None:
        result = CliRunner().invoke(
            app,
            ["federate", "--out", str(dep.settings.work_dir), "--rounds", "2", "--min-stores", "2",
             *[a for store in STORES for a in ("--publication", str(dep.sites[store] / "publication.json"))],
             "--app", str(REPO), *dep.cli_args, "--verbose"],
            env=dep.env,
        )
        outcome["exit"], outcome["output"] = result.exit_code, result.output

    thread = threading.Thread(target=submit, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while victim.log.read_text(errors="replace").count("Receiving: train message") < 2:
        assert thread.is_alive(), f"the run ended before round 2 reached {VICTIM}: {outcome.get('output')}"
        assert time.monotonic() < deadline, "round 2 never reached the victim"
        time.sleep(0.05)
    stop(victim)
    thread.join(timeout=180)
    assert not thread.is_alive(), "siloguard federate did not return"
    dep.federate_exit, dep.federate_output = outcome["exit"], outcome["output"]  # type: ignore[assignment]
    return dep


def test_when_a_node_key_is_not_registered_then_the_superlink_refuses_the_supernode(deployment: Deployment):
    settings = deployment.settings
    keys = make_node_keys(settings.deploy.root, "intruder")
    command = supernode_command(settings, "intruder", None, runtime_port=_free_port(), key=keys.private_key, max_retries=1)
    intruder = start("supernode intruder", command, settings.deploy.root / "logs" / "intruder.log",
                     flower_env(settings, deployment.env))
    try:
        intruder.process.wait(timeout=60)
    finally:
        stop(intruder)
    log = intruder.log.read_text()
    assert intruder.process.returncode != 0
    assert "Failed to activate SuperNode" in log
    assert "SuperNode ID" not in log
    assert "No SuperNode found with the given public key" in deployment.link.log.read_text()


def test_when_a_client_speaks_plaintext_then_it_cannot_connect(deployment: Deployment):
    d = deployment.settings.deploy
    plain = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("GET", "/")
        plain.getresponse()
    plain.close()
    # A plaintext SuperNode (--insecure) gets no further either.
    command = supernode_command(deployment.settings, "france", None, runtime_port=_free_port(), max_retries=1)
    for flag in ("--root-certificates", "--auth-supernode-private-key"):  # Flower refuses a key without TLS
        cut = command.index(flag)
        command = command[:cut] + command[cut + 2 :]
    command.append("--insecure")
    node = start("supernode plaintext", command, d.root / "logs" / "plaintext.log", flower_env(deployment.settings, deployment.env))
    try:
        node.process.wait(timeout=60)
    finally:
        stop(node)
    assert node.process.returncode != 0
    assert "Failed to initialize the connection to the SuperLink" in node.log.read_text()
    assert "SuperNode ID" not in node.log.read_text()


def test_tls_is_served_with_the_deployment_ca(deployment: Deployment):
    d = deployment.settings.deploy
    context = ssl.create_default_context(cafile=str(d.root / "pki" / "ca.pem"))
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    untrusted = ssl.create_default_context()  # system CAs only: the deployment's cert is not theirs
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.wrap_socket(raw, server_hostname="127.0.0.1")


def test_enrolment_writes_private_keys_0600_never_prints_them_and_is_audited(deployment: Deployment):
    settings = deployment.settings
    for store in STORES:
        keys = node_keys(settings.deploy.root, store)
        assert keys.private_key.stat().st_mode & 0o777 == 0o600
        secret = keys.private_key.read_text()
        assert "PRIVATE KEY" in secret
        body = "".join(secret.splitlines()[1:-1])
        assert body[:40] not in deployment.enroll_output[store]
        assert "enrolled: node" in deployment.enroll_output[store]
    for name in ("ca.key", "superlink.key"):
        assert (settings.deploy.root / "pki" / name).stat().st_mode & 0o777 == 0o600
    enrolled = sorted(e.store for e in _audit_events(settings) if e.action == "node.enrolled")
    assert enrolled == list(STORES)


def test_the_federation_finishes_and_registers_the_model(federated: Deployment):
    assert federated.federate_exit == 0, federated.federate_output
    assert "finished:completed" in federated.federate_output
    work = federated.settings.work_dir
    version = current_version(work)
    assert version is not None
    manifest = load_manifest(work, version)
    assert manifest["rounds"] == 2
    assert manifest["sha256"] == sha256_file(work / "models" / version / "model.pt")
    assert sorted(manifest["epsilon_per_store"]) == list(STORES)
    assert all(0 < eps <= 50.0 for eps in manifest["epsilon_per_store"].values())
    assert manifest["privacy"]["enabled"] is True


def test_the_audit_log_records_each_round_and_the_registered_model(federated: Deployment):
    events = _audit_events(federated.settings)
    rounds = {e.round: e for e in events if e.action == "federation.round"}
    assert sorted(rounds) == [1, 2]
    assert rounds[1].counts["updates_accepted"] == 3
    spend = {(e.round, e.store) for e in events if e.action == "privacy.spend"}
    assert {(1, s) for s in STORES} <= spend
    manifest = load_manifest(federated.settings.work_dir, current_version(federated.settings.work_dir))
    registered = [e for e in events if e.action == "model.registered"]
    assert [e.resource for e in registered] == [f"model:{manifest['version']}"]
    from siloguard.federation.registry import sha256_from_counts

    assert sha256_from_counts(dict(registered[0].counts)) == manifest["sha256"]
    assert sha256_from_counts(dict(rounds[2].counts)) == manifest["history"][1]["model_sha256"]


def test_a_supernode_stopped_during_a_round_is_reported_dropped_and_the_round_completes(federated: Deployment):
    manifest = load_manifest(federated.settings.work_dir, current_version(federated.settings.work_dir))
    round1, round2 = manifest["history"]
    assert round1["participants"] == list(STORES)
    assert round2["dropped"] == [VICTIM]
    assert round2["participants"] == sorted(set(STORES) - {VICTIM})
    assert round2["model_sha256"] and round2["model_sha256"] != round1["model_sha256"]
    dropped = [e for e in _audit_events(federated.settings) if e.action == "federation.store_dropped"]
    assert [(e.round, e.store) for e in dropped] == [(2, VICTIM)]
    assert "dropped" in federated.federate_output


def test_when_the_serverapp_fails_then_federate_reads_the_run_status_and_exits_non_zero(deployment: Deployment, tmp_path: Path):
    # flwr run --stream exits 0 even when the ServerApp raises; federate must not.
    bad = tmp_path / "bad-run"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps({"stores": {}, "catalogue": str(tmp_path / "missing.json"),
                                              "split_date": "2011-04-06", "end_date": "2011-04-28"}))
    result = CliRunner().invoke(
        app, ["federate", "--out", str(bad), "--rounds", "1", "--app", str(REPO), *deployment.cli_args],
        env=deployment.env,
    )
    assert result.exit_code == 4, result.output
    assert "ended finished:failed" in result.output
    assert current_version(bad) is None


def _rows(url: str, sql: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


def test_each_store_keeps_its_own_rows_in_its_own_database_and_the_coordinator_holds_none(federated: Deployment):
    from siloguard.clients.site import StoreSite

    assert federated.federate_exit == 0, federated.federate_output
    customers: set[str] = set()
    urls = set()
    for store in STORES:
        site = StoreSite.open(federated.sites[store])
        url = site.settings.database.url
        urls.add(url)
        if store == PG_STORE and os.environ.get(PG_ENV):
            assert url.startswith("postgresql") and "search_path" in url
        else:
            assert url == f"sqlite:///{federated.sites[store].resolve() / 'siloguard.db'}"
        assert {r[0] for r in _rows(url, "select store from privacy_ledger")} == {store}
        assert _rows(url, "select count(*) from consent_events")[0][0] == 12  # its own 12 customers
        actors = {json.loads(r[0])["actor"] for r in _rows(url, "select body from audit_events")}
        assert actors <= {f"client:{store}", f"store:{store}"}, actors
        customers |= {str(c) for c in site.transactions()["customer_id"].unique()}
    assert len(urls) == 3
    coordinator = federated.settings
    assert _rows(coordinator.database.url, "select count(*) from consent_events")[0][0] == 0
    assert _rows(coordinator.database.url, "select count(*) from privacy_ledger")[0][0] == 0
    assert _rows(coordinator.database.url, "select count(*) from store_suppressions")[0][0] == 0
    files = [p for p in coordinator.work_dir.rglob("*") if p.is_file()]
    assert not (coordinator.work_dir / "keys" / "stores").exists()
    # A customer id as a whole word (not a run of digits inside a hash, a timestamp or a number).
    ids = re.compile(rb"(?<![0-9A-Za-z])(?:" + b"|".join(c.encode() for c in sorted(customers)) + rb")(?![0-9A-Za-z])")
    for path in files:
        found = ids.search(path.read_bytes())
        assert found is None, f"customer id {found.group().decode()} in {path}"


def test_every_store_log_verifies_against_the_heads_the_coordinator_witnessed(federated: Deployment):
    from siloguard.clients.site import StoreSite

    events = _audit_events(federated.settings)
    witnessed = {(e.store, e.round) for e in events if e.action == "audit.head_witnessed"}
    assert {(s, 1) for s in STORES} <= witnessed  # round 2: every store but the one stopped
    for store in STORES:
        site = StoreSite.open(federated.sites[store])
        result = CliRunner().invoke(app, [
            "audit", "verify", "--db", site.settings.database.url, "--public-key", str(site.settings.audit.public_key),
            "--witnessed", str(federated.settings.work_dir), "--store", store,
        ], env={k: None for k in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT")})
        assert result.exit_code == 0, result.output
        assert "the coordinator witnessed" in result.output


def test_access_and_erasure_reach_the_stores_as_tasks_and_the_privacy_service_holds_no_store_data(
    federated: Deployment, tmp_path: Path
) -> None:
    """The privacy service on its own site: stores register their receipt keys, answer a sealed
    access request and an erasure from their own sites; the service's directory and database
    hold no store key, silo row, customer id or consent event, and the answer only as ciphertext."""
    import shutil

    from fastapi.testclient import TestClient

    from siloguard.api.app import create_app
    from siloguard.clients.site import StoreSite
    from siloguard.dsr.notifier import read_outbox
    from siloguard.dsr.sealed import new_key_pair, open_parts
    from siloguard.dsr.sync import sync_store
    from siloguard.privacy.pseudonyms import Pseudonymiser
    from siloguard.storage import create_engine, upgrade_database

    privacy = tmp_path / "privacy"
    privacy.mkdir()
    shutil.copyfile(federated.settings.work_dir / "run.json", privacy / "run.json")  # store names and laws: public
    penv = {"SILOGUARD_DATABASE__URL": f"sqlite:///{privacy / 'siloguard.db'}", "SILOGUARD_KEYS__ROOT": str(privacy / "keys")}
    settings = Settings.build(work_dir=privacy, database={"url": penv["SILOGUARD_DATABASE__URL"]}, keys={"root": privacy / "keys"},
                              audit={"signing_key": privacy / "audit.key", "public_key": privacy / "audit.pub"},
                              api={"rate_per_key": "100000/minute", "rate_per_ip": "100000/minute"})
    engine = create_engine(settings.database.url)
    upgrade_database(engine)
    runner = CliRunner()
    sites = {s: StoreSite.open(federated.sites[s]) for s in STORES}
    store_keys = {}
    for store, site in sites.items():
        printed = runner.invoke(app, ["store", "receipt-key", "--site", str(site.directory)],
                                env={k: None for k in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT")})
        assert printed.exit_code == 0, printed.output
        made = runner.invoke(app, ["keys", "create", "--role", "store_operator", "--store", store,
                                   "--receipt-key", printed.stdout.strip()], env=penv)
        assert made.exit_code == 0, made.output
        store_keys[store] = made.stdout.strip().splitlines()[0]
    subject = str(sites["germany"].transactions()["customer_id"].iloc[0])
    pseudonym = Pseudonymiser(sites["germany"].keys()).pseudonym(subject)
    private, public = new_key_pair()

    def sync_all(client: TestClient) -> None:
        for store, site in sites.items():
            client.headers["Authorization"] = f"Bearer {store_keys[store]}"
            try:
                sync_store(client, site.settings, store)
            finally:
                del client.headers["Authorization"]

    def code(request_id: str) -> str:
        return re.search(r"is ([0-9]{8})\.", read_outbox(engine, request_id)[-1]["body"]).group(1)  # type: ignore[union-attr]

    app_ = create_app(settings)
    try:
        with TestClient(app_) as client:
            filed = client.post("/v1/requests", json={"kind": "access", "customer_ref": subject, "answer_key": public}).json()["request"]
            token = client.post(f"/v1/requests/{filed['id']}/verify", json={"code": code(filed["id"])}).json()["subject_token"]
            sync_all(client)
            with engine.connect() as conn:
                held = b"".join(str(r).encode() for r in conn.execute(sa.text("select * from dsr_requests")).all())
            assert pseudonym.encode() not in held and b"sealed" in held  # ciphertext only
            reply = client.get(f"/v1/requests/{filed['id']}/access", headers={"Authorization": f"Bearer {token}"})
            assert reply.status_code == 200
            opened = open_parts(private, reply.json()["sealed"], filed["id"])
            per_store = {s["store"]: s for s in opened["stores"]}
            assert per_store["germany"]["records"] > 0 and per_store["france"]["records"] == 0
            assert {row["customer_id"] for row in per_store["germany"]["data"]} == {pseudonym}

            erasure = client.post("/v1/requests", json={"kind": "erasure", "customer_ref": subject}).json()["request"]
            client.post(f"/v1/requests/{erasure['id']}/verify", json={"code": code(erasure["id"])})
            sync_all(client)
            assert client.get(f"/v1/requests/{erasure['id']}", headers={"Authorization": f"Bearer {token}"}).json()["status"] == "completed"
    finally:
        app_.state.service.audit.close()
    # The store erased the subject on its own site.
    assert subject not in {str(c) for c in sites["germany"].transactions()["customer_id"]}
    # The privacy service's directory and database: no store key, no silo row, no customer id, no consent event.
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from consent_events")).scalar_one() == 0
        assert conn.execute(sa.text("select count(*) from store_suppressions")).scalar_one() == 0
    engine.dispose()
    assert not (privacy / "keys" / "stores").exists()
    customers = {str(c) for site in sites.values() for c in site.transactions()["customer_id"].unique()} | {subject}
    ids = re.compile(rb"(?<![0-9A-Za-z])(?:" + b"|".join(c.encode() for c in sorted(customers)) + rb")(?![0-9A-Za-z])")
    for path in (p for p in privacy.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found = ids.search(data)
        assert found is None, f"customer id {found.group().decode()} in {path}"
        assert pseudonym.encode() not in data, f"the subject's pseudonym in {path}"
