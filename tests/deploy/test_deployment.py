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
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
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
from siloguard.federation.runner import prepare_run
from tests.conftest import tiny_customers, write_consent, write_tiny_retail

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
STORES = ("france", "germany", "united-kingdom")
VICTIM = "germany"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]  # SILOGUARD_* every process of the deployment shares
    link: Started
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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("deploy")
    retail = write_tiny_retail(tmp / "tiny.csv")
    consent = write_consent(tmp / "consent.csv", tiny_customers(retail))
    # Every process of the deployment (and `siloguard federate`) reads the same settings from
    # its SILOGUARD_* environment; the run config carries only the keys pyproject declares.
    shared = {
        "data": {"path": retail, "consent": consent, "uk_stores": 1, "min_store_customers": 5, "test_weeks": 3},
        "model": {"dim": 8, "hidden": 4, "cutoffs": 2, "batch_size": 16, "local_epochs": 1},
        "database": {"url": f"sqlite:///{tmp / 'siloguard.db'}"},
        "keys": {"root": tmp / "store-keys"},
        "privacy": {"enabled": True, "sample_rate": 0.5, "epsilon_cap": 50.0},
    }
    env = {f"SILOGUARD_{section.upper()}__{key.upper()}": str(value)
           for section, values in shared.items() for key, value in values.items()}
    settings = Settings.build(
        work_dir=tmp / "work",
        federation={"rounds": 2, "min_stores": 2},
        deploy={"root": tmp / "deploy", "port": _free_port(), "connect_timeout": 60.0},
        **shared,
    )
    runner = CliRunner()
    result = runner.invoke(app, ["pki", "init", "--root", str(settings.deploy.root), "--host", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    prepared = prepare_run(settings)
    assert sorted(prepared.stores) == list(STORES)

    link = start("superlink", superlink_command(settings), tmp / "logs" / "superlink.log",
                 flower_env(settings, env), cwd=tmp)
    dep = Deployment(settings, env, link)
    try:
        wait_for_port("127.0.0.1", settings.deploy.port, time.monotonic() + 60, link)
        for store in STORES:
            result = runner.invoke(app, ["store", "enroll", store, *dep.cli_args], env=env)
            assert result.exit_code == 0, result.output
            dep.enroll_output[store] = result.output
        for store in STORES:
            command = supernode_command(settings, store, prepared.stores[store], runtime_port=_free_port())
            dep.nodes[store] = start(f"supernode {store}", command, tmp / "logs" / f"{store}.log",
                                     flower_env(settings, env), cwd=tmp)
        for node in dep.nodes.values():
            wait_for_log(node, r"SuperNode ID: \d+", time.monotonic() + 60)
        yield dep
    finally:
        for node in dep.nodes.values():
            stop(node)
        stop(link)


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
