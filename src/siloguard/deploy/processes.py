"""Starting and stopping Flower's SuperLink and SuperNodes as real processes.

Each process is started in a session of its own, so stopping it (by its pid, which is also
its process group id) also stops what it started: the SuperExec that runs the ServerApp or
the ClientApps. Readiness is polled against a deadline (a port that accepts connections, a
line in the log), never assumed after a sleep.

The SuperLink runs with TLS (the deployment's CA and certificate from ``siloguard pki
init``) and ``--enable-supernode-auth``: only SuperNodes whose public key was registered
(``siloguard store enroll``) are let in. Telemetry, update checks and runtime dependency
installation are off: the processes use this environment's packages and talk to nothing
but each other.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from siloguard.config import Settings
from siloguard.deploy.pki import load_pki, node_keys
from siloguard.errors import ConfigError, FederationError

__all__ = [
    "Started",
    "flower_env",
    "start",
    "stop",
    "superlink_command",
    "supernode_command",
    "wait_for_log",
    "wait_for_port",
]


@dataclass
class Started:
    """A process we started: its handle and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _bin(name: str) -> str:
    """The Flower executable installed next to this Python (the venv's bin)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise ConfigError(f"{name} is not installed next to {sys.executable}: install flwr in this environment")
    return str(path)


def flower_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Flower process and ``flwr`` call of the deployment gets.

    ``FLWR_HOME`` keeps Flower's CLI configuration and installed apps under the deployment
    root instead of ``~/.flwr``; this environment's bin comes first on PATH because the
    SuperLink and SuperNodes start ``flower-superexec`` from PATH.
    """
    env = dict(os.environ)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str((settings.deploy.root / "flwr").resolve()),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def superlink_command(settings: Settings) -> list[str]:
    pki = load_pki(settings.deploy.root)
    d = settings.deploy
    return [
        _bin("flower-superlink"),
        "--ssl-ca-certfile", str(pki.ca_cert.resolve()),
        "--ssl-certfile", str(pki.server_cert.resolve()),
        "--ssl-keyfile", str(pki.server_key.resolve()),
        "--enable-supernode-auth",
        "--host", d.host,
        "--port", str(d.port),
        "--database", str((d.root / "superlink.db").resolve()),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(
    settings: Settings,
    store: str,
    data: Path | None,
    *,
    runtime_port: int,
    key: Path | None = None,
    max_retries: int | None = None,
    site: Path | None = None,
) -> list[str]:
    """flower-supernode for ``store``: TLS to the SuperLink (the deployment CA), its node key.

    ``site`` is the store's site (``siloguard store init``): the node's ClientApp finds its file,
    database and keys there (node config ``site``); ``data`` is an older run's bare silo file.

    ``key`` defaults to the store's enrolled key; ``runtime_port`` is the SuperNode's own
    loopback API for its ClientApp processes (one per node on a machine).
    """
    pki = load_pki(settings.deploy.root)
    key = key if key is not None else node_keys(settings.deploy.root, store).private_key
    if not key.is_file():
        raise ConfigError(f"store {store!r} has no node key at {key}: run 'siloguard store enroll {store}' first")
    node_config = f'store="{store}"'
    for name, path in (("data", data), ("site", site)):
        if path is None:
            continue
        if '"' in str(path.resolve()) or "\\" in str(path.resolve()):
            raise ConfigError(f"--{name} {path}: the path may not contain quotes or backslashes (Flower's node config is TOML)")
        node_config += f' {name}="{path.resolve()}"'
    command = [
        _bin("flower-supernode"),
        "--superlink", f"{settings.deploy.host}:{settings.deploy.port}",
        "--root-certificates", str(pki.ca_cert.resolve()),
        "--auth-supernode-private-key", str(key.resolve()),
        "--node-config", node_config,
        "--host", "127.0.0.1",
        "--port", str(runtime_port),
    ]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return command


def start(name: str, command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> Started:
    """Start ``command`` in its own session, stdout and stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=cwd, start_new_session=True,
        )
    return Started(name, process, log)


def stop(started: Started, *, grace: float = 15.0) -> int | None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it; the exit code."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(started.pid, sig)
        except ProcessLookupError:
            pass

    if started.process.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            started.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            started.process.wait(timeout=grace)
    signal_group(signal.SIGKILL)  # children the leader left behind (SuperExec, app processes)
    return started.process.returncode


def wait_for_port(host: str, port: int, deadline: float, started: Started | None = None) -> None:
    """Until ``host:port`` accepts a TCP connection; FederationError at ``deadline`` or if the process died."""
    while True:
        if started is not None and started.process.poll() is not None:
            raise FederationError(f"{started.name} exited with code {started.process.returncode}: see {started.log}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise FederationError(f"{host}:{port} did not open in time: see {started.log if started else 'the log'}")
        time.sleep(0.1)


def wait_for_log(started: Started, pattern: str, deadline: float, *, or_exit: bool = False) -> re.Match[str] | None:
    """Until ``pattern`` appears in the process's log.

    With ``or_exit`` the process ending first returns None (for processes expected to stop);
    otherwise that is a FederationError, as is the deadline.
    """
    regex = re.compile(pattern)
    while True:
        text = started.log.read_text(errors="replace") if started.log.is_file() else ""
        match = regex.search(text)
        if match:
            return match
        if started.process.poll() is not None:
            text = started.log.read_text(errors="replace")
            match = regex.search(text)
            if match or or_exit:
                return match
            raise FederationError(f"{started.name} exited with code {started.process.returncode}: see {started.log}")
        if time.monotonic() > deadline:
            raise FederationError(f"{started.name}: {pattern!r} did not appear in {started.log} in time")
        time.sleep(0.1)
