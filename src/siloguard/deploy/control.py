"""Talking to the SuperLink through Flower's own CLI: register nodes, submit runs, read status.

``flwr`` reads its connections from ``$FLWR_HOME/config.toml``; :func:`write_connection`
writes one named ``siloguard`` (the SuperLink's address and the deployment CA) into the
deployment's own Flower home, so nothing under ``~/.flwr`` is read or changed.

``flwr run --stream`` exits 0 even when the ServerApp fails, so :func:`federate` never trusts
its exit code: it reads the run's final status from ``flwr list --run-id ID --format json``
and raises unless it is ``finished:completed``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from siloguard.config import Settings
from siloguard.deploy.pki import load_pki
from siloguard.deploy.processes import flower_env
from siloguard.errors import ConfigError, FederationError

__all__ = ["CONNECTION", "RunResult", "federate", "register_node", "run_status", "write_connection"]

#: Name of the SuperLink connection in the deployment's Flower config.
CONNECTION = "siloguard"
_RUN_ID = re.compile(r"Successfully started run (\d+)")


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    details: str


def _flwr() -> str:
    path = Path(sys.executable).parent / "flwr"
    if not path.is_file():
        raise ConfigError(f"flwr is not installed next to {sys.executable}: install flwr in this environment")
    return str(path)


def write_connection(settings: Settings) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with the ``siloguard`` connection (TLS, deployment CA)."""
    import tomli_w  # a dependency of flwr, which writes this file with it too

    from siloguard._files import write_atomic

    pki = load_pki(settings.deploy.root)
    home = (settings.deploy.root / "flwr").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "superlink": {
            "default": CONNECTION,
            CONNECTION: {
                "address": f"{settings.deploy.host}:{settings.deploy.port}",
                "root-certificates": str(pki.ca_cert.resolve()),
            },
        }
    }
    path = home / "config.toml"
    write_atomic(path, tomli_w.dumps(config).encode())
    return path


def _call(settings: Settings, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    write_connection(settings)
    try:
        return subprocess.run(  # noqa: S603 - our own argument list, no shell
            [_flwr(), *args], env=flower_env(settings), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise FederationError(
            f"flwr {args[0]} did not answer within {timeout:.0f} s: is the coordinator running "
            f"at {settings.deploy.host}:{settings.deploy.port}? (siloguard coordinator start)"
        ) from None


def _json_out(proc: subprocess.CompletedProcess[str], what: str) -> dict:
    """flwr's ``--format json`` output; its message on failure (never a key or a secret)."""
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        data = {}
    if proc.returncode != 0 or not data.get("success", False):
        text = str(data.get("error-message") or proc.stderr or proc.stdout or "no output")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Using SuperLink")]
        raise FederationError(f"{what} failed: {' '.join(lines)}")
    return data


def register_node(settings: Settings, public_key: Path, store: str) -> int:
    """Register a store's node public key with the SuperLink (``flwr supernode register``); its node id."""
    proc = _call(
        settings,
        ["supernode", "register", str(public_key.resolve()), CONNECTION, "--name", store, "--format", "json"],
        timeout=settings.deploy.connect_timeout,
    )
    return int(_json_out(proc, f"registering store {store!r} with the SuperLink")["node-id"])


def run_status(settings: Settings, run_id: int) -> RunResult:
    proc = _call(
        settings, ["list", CONNECTION, "--run-id", str(run_id), "--format", "json"], timeout=settings.deploy.connect_timeout
    )
    runs = _json_out(proc, f"reading the status of run {run_id}").get("runs", [])
    if not runs:
        raise FederationError(f"the SuperLink does not know run {run_id}")
    run = runs[0]
    return RunResult(run_id, str(run.get("status", "")), " ".join(str(run.get("status-details", "")).split()))


def federate(
    settings: Settings,
    app_dir: Path,
    run_config: dict[str, object],
    *,
    on_line: Callable[[str], None] | None = None,
    timeout: float = 3600.0,
) -> RunResult:
    """Submit the Flower app in ``app_dir`` with ``run_config``, stream its log, check its final status."""
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} is not a Flower app (no pyproject.toml): pass --app with the siloguard project directory")
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())  # TOML values; JSON strings are TOML strings
    write_connection(settings)
    command = [_flwr(), "run", str(app_dir.resolve()), CONNECTION, "--stream"]
    if overrides:
        command += ["--run-config", overrides]
    deadline = time.monotonic() + timeout
    run_id: int | None = None
    with subprocess.Popen(  # noqa: S603 - our own argument list, no shell
        command, env=flower_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if run_id is None and (match := _RUN_ID.search(line)):
                    run_id = int(match.group(1))
                if on_line is not None:
                    on_line(line.rstrip("\n"))
                if time.monotonic() > deadline:
                    break
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    if run_id is None:
        raise FederationError("flwr run did not start a run: see its output above")
    # The stream ends when the run ends; its exit code says nothing about the ServerApp.
    while True:
        result = run_status(settings, run_id)
        if result.status.startswith("finished"):
            break
        if time.monotonic() > deadline:
            raise FederationError(f"run {run_id} did not finish in {timeout:.0f} s (status {result.status}): flwr stop {run_id}")
        time.sleep(1.0)
    if result.status != "finished:completed":
        raise FederationError(f"run {run_id} ended {result.status}: {result.details or 'see the ServerApp log above'}")
    return result
