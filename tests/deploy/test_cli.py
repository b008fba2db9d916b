"""The deployment commands as an operator runs them: errors in one line, Ctrl-C stops what they started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from siloguard.cli import app
from siloguard.deploy.pki import init_pki

SILOGUARD = str(Path(sys.executable).parent / "siloguard")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_when_there_is_no_pki_then_coordinator_start_says_to_run_pki_init(tmp_path: Path):
    result = CliRunner().invoke(app, ["coordinator", "start", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "run 'siloguard pki init' first" in result.output


def test_when_the_stores_file_is_missing_then_store_start_stops_before_starting_anything(tmp_path: Path):
    result = CliRunner().invoke(app, ["store", "start", "germany", "--data", str(tmp_path / "nope.csv"),
                                      "--root", str(tmp_path)])
    assert result.exit_code == 3
    assert "no such file" in result.output


def test_when_a_store_is_not_enrolled_then_store_start_says_to_enroll(tmp_path: Path):
    init_pki(tmp_path, ["127.0.0.1"])
    data = tmp_path / "germany.csv"
    data.write_text("x\n")
    result = CliRunner().invoke(app, ["store", "start", "germany", "--data", str(data), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "siloguard store enroll germany" in result.output


def test_when_the_coordinator_is_down_then_enroll_fails_in_one_line(tmp_path: Path):
    init_pki(tmp_path, ["127.0.0.1"])
    result = CliRunner().invoke(
        app, ["store", "enroll", "germany", "--root", str(tmp_path), "--port", str(_free_port())],
        env={"SILOGUARD_DEPLOY__CONNECT_TIMEOUT": "30", "SILOGUARD_DATABASE__URL": f"sqlite:///{tmp_path / 'db.sqlite'}"},
    )
    assert result.exit_code == 4, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]  # one line
    assert result.output.startswith("error: registering store 'germany' with the SuperLink failed:")
    assert (tmp_path / "nodes" / "germany" / "node.key").is_file()  # kept: enrol again once it is up


def test_coordinator_start_serves_tls_until_interrupted_and_then_stops_the_superlink(tmp_path: Path):
    init_pki(tmp_path, ["127.0.0.1"])
    port = _free_port()
    cli = subprocess.Popen(
        [SILOGUARD, "coordinator", "start", "--root", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    link_pid = None
    try:
        assert cli.stdout is not None
        deadline = time.monotonic() + 90
        for line in cli.stdout:  # the CLI prints this line once the port accepts connections
            if match := re.search(r"SuperLink \(pid (\d+)\)", line):
                link_pid = int(match.group(1))
                break
            assert time.monotonic() < deadline
        assert link_pid is not None and _alive(link_pid)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        cli.send_signal(signal.SIGINT)  # Ctrl-C
        cli.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _alive(link_pid):
            assert time.monotonic() < deadline, "the SuperLink outlived coordinator start"
            time.sleep(0.1)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
        if link_pid is not None and _alive(link_pid):
            os.killpg(link_pid, signal.SIGKILL)
