"""The README's walkthroughs run as written, in order, on a fresh demo run.

The blocks marked ```` ```sh walkthrough ```` are joined into one bash script (``set -euo
pipefail``) and run from a scratch directory after ``siloguard demo --rounds 1`` (the README
says ``make demo``: the same run with its default 7 rounds). Only the API's port is changed, to
a free one, so that the test never collides with a server already on 8000.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```sh walkthrough\n(.*?)^```", re.S | re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_walkthroughs_run_as_written(tmp_path: Path) -> None:
    blocks = BLOCK.findall(README.read_text())
    assert len(blocks) == 4, "store operator, data subject (two blocks), compliance officer"
    port = str(_free_port())
    script = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(blocks).replace("8000", port)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "FLWR_TELEMETRY_ENABLED": "0"}
    for name in [k for k in env if k.startswith("SILOGUARD_")]:  # the README's commands name their run themselves
        del env[name]
    demo = subprocess.run(["siloguard", "demo", "--rounds", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert re.search(r"OK: \d+ rules on runs/demo/coordinator", done.stdout)  # the officer's check line
    assert re.search(r"OK: \d+ rules on .*stores/germany", done.stdout)  # the store's own
    assert 'customer number <strong id="customer-number">12738' in done.stdout  # the subject's answer, readable
    assert (tmp_path / "my-data.html").stat().st_size > 2000 and "Your rights" in (tmp_path / "my-data.html").read_text()
    assert (tmp_path / "report" / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "Art. 30(1)" in (tmp_path / "ropa.html").read_text()
    assert re.search(r"inc-\d{4}-\d{2}-\d{2}-[a-z]{6}", done.stdout)  # the incident opened and listed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["summary"]["incidents_open"] == 1 and report["incidents"]["rows"][0]["risk"] == "high"
    assert report["erasure_receipts"]["status"] == "no data yet"  # the coordinator's log: no requests there
    requests = json.loads((tmp_path / "requests-report" / "report.json").read_text())
    assert [r["kind"] for r in requests["data_subject_requests"]["rows"]] == ["access"]  # the service's log has the request
    assert requests["data_subject_requests"]["rows"][0]["state"] == "completed on time"
