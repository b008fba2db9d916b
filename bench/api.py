"""Privacy API load benchmark: consent lookups and DSR submissions at a fixed rate.

    .venv/bin/python bench/api.py --workers 2                       # SQLite file
    .venv/bin/python bench/api.py --workers 2 --db postgresql+psycopg://postgres@127.0.0.1:5432/test

Starts ``siloguard serve --workers N`` as its own process on loopback (N > 1: the rate limits
counted in Redis at --redis, as a deployment with several workers must) over a fresh database (a SQLite
file, or a fresh schema of the PostgreSQL database given, dropped afterwards) and a prepared
run of three stores, then drives it from this process with an open-loop load: requests are
sent on a fixed schedule (--rate per second for --duration seconds) whether or not earlier
ones have answered, so a slow server shows up as latency rather than as a lower rate.

* **consent lookup**: ``GET /v1/consent`` with a verified subject's token (key check, Casbin
  decision, the subject's consent for 5 purposes in each of the 3 stores);
* **DSR submission**: ``POST /v1/requests`` (an access request of a new subject: clock,
  request row, code in the outbox, two audited transitions, all durable).

Latency runs from a request's scheduled send time to having its whole answer. Prints a markdown table and
writes bench/results/api.json. Goals (issue 6): p99 < 10 ms (consent) and < 50 ms (DSR).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
SILOGUARD = str(Path(sys.executable).with_name("siloguard"))
STORES = ("alpha", "beta", "gamma")
HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


@contextmanager
def database(url: str | None, tmp: Path) -> Iterator[str]:
    if url is None:
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    schema = "sgbench_" + secrets.token_hex(4)
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield sa.engine.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


def prepare(tmp: Path, url: str, rate_storage: str = "memory://") -> dict[str, str]:
    work = tmp / "run"
    (work / "stores").mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"stores": list(STORES)}))
    rows = [[f"5{i:05d}", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "2010-12-01 08:26:00", "2.55", f"{12000 + i % 500}.0", "United Kingdom"]
            for i in range(2000)]
    for store in STORES:
        pd.DataFrame(rows, columns=HEADER).to_csv(work / "stores" / f"{store}.csv", index=False)
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    env = os.environ | {
        "SILOGUARD_DATABASE__URL": url,
        "SILOGUARD_KEYS__ROOT": str(keys),
        "SILOGUARD_WORK_DIR": str(work),
        "SILOGUARD_AUDIT__SIGNING_KEY": str(tmp / "none.key"),
        "SILOGUARD_API__RATE_PER_KEY": "1000000/minute",
        "SILOGUARD_API__RATE_PER_IP": "1000000/minute",
        "SILOGUARD_API__RATE_STORAGE": rate_storage,
        "SILOGUARD_API__RATE_KEY_PREFIX": "bench-" + secrets.token_hex(4),
        "SILOGUARD_API__RESUME_EVERY_SECONDS": "3600",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    subprocess.run([SILOGUARD, "db", "upgrade"], env=env, check=True, capture_output=True)
    return env


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process and its workers used so far (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not start in 60 s")


def subject_tokens(base: str, url: str, n: int) -> list[str]:
    """Verified subjects: submit a consent request each, read the code from the outbox, verify."""
    from siloguard.dsr.notifier import read_outbox
    from siloguard.storage.db import create_engine

    engine = create_engine(url)
    tokens = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(n):
            body = {"kind": "consent", "customer_ref": str(12000 + i),
                    "consent": [{"purpose": "personalize.profiling", "action": "grant"}]}
            rid = client.post("/v1/requests", json=body).json()["request"]["id"]
            code = re.search(r"is ([0-9]{8})\.", read_outbox(engine, rid)[-1]["body"]).group(1)  # type: ignore[union-attr]
            tokens.append(client.post(f"/v1/requests/{rid}/verify", json={"code": code}).json()["subject_token"])
    engine.dispose()
    return tokens


async def _connection(host: str, port: int, jobs: asyncio.Queue, done: list[tuple[float, int]]) -> None:
    """One keep-alive HTTP/1.1 connection taking jobs (scheduled time, request bytes) in turn."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (job := await jobs.get()) is not None:
            scheduled, raw = job
            writer.write(raw)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            done.append((time.perf_counter() - scheduled, status))
    finally:
        writer.close()


async def open_loop(base: str, rate: float, duration: float, make: Any, connections: int = 64) -> dict[str, Any]:
    """Send ``make(i)`` (raw request bytes) at ``rate`` per second, on schedule, over a pool of
    keep-alive connections. Latency runs from a request's scheduled time to its whole answer,
    so time spent waiting for a free connection counts (no coordinated omission).

    A raw HTTP/1.1 client rather than httpx: httpx's async client costs milliseconds of CPU per
    request, which on two cores starves the server it is measuring.
    """
    host, port = base.removeprefix("http://").split(":")
    # The generator's own full collections (its heap holds numpy, pandas, SQLAlchemy) would
    # delay sends and reads and count as the server's latency: out of the collector's sight.
    gc.collect()
    gc.freeze()
    jobs: asyncio.Queue = asyncio.Queue()
    done: list[tuple[float, int]] = []
    workers = [asyncio.create_task(_connection(host, int(port), jobs, done)) for _ in range(connections)]
    total = int(rate * duration)
    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.put_nowait((due, make(i)))
    for _ in workers:
        jobs.put_nowait(None)
    await asyncio.gather(*workers)
    wall = time.perf_counter() - t0
    ok = np.array([lat for lat, status in done if status < 400]) * 1000
    errors: dict[str, int] = {}
    for _, status in done:
        if status >= 400:
            errors[str(status)] = errors.get(str(status), 0) + 1
    return {
        "sent": total, "ok": len(ok), "errors": errors, "achieved_rate": round(len(done) / wall, 1),
        "p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
        "p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
        "max_ms": round(float(ok.max()), 2) if len(ok) else None,
    }


def _get(path: str, token: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()


def _post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="PostgreSQL URL (a fresh schema is used); default: a SQLite file")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="server processes (siloguard serve --workers)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="rate-limit storage when --workers > 1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api.json")
    args = parser.parse_args()
    backend = "postgresql" if args.db else "sqlite"
    load_before = list(os.getloadavg())

    with tempfile.TemporaryDirectory() as tmpdir, database(args.db, Path(tmpdir)) as url:
        tmp = Path(tmpdir)
        env = prepare(tmp, url, args.redis if args.workers > 1 else "memory://")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(tmp / "server.log", "wb")
        proc = subprocess.Popen([SILOGUARD, "serve", "--port", str(port), "--workers", str(args.workers)],
                                env=env, stdout=log, stderr=log)
        try:
            wait_ready(base, proc)
            tokens = subject_tokens(base, url, args.subjects)
            cpu0 = server_cpu(proc.pid)
            consent = asyncio.run(open_loop(base, args.rate, args.duration, lambda i: _get("/v1/consent", tokens[i % len(tokens)])))
            cpu1 = server_cpu(proc.pid)
            run = secrets.token_hex(3)
            dsr = asyncio.run(open_loop(base, args.rate, args.duration, lambda i: _post(
                "/v1/requests", {"kind": "access", "customer_ref": f"b{run}{i}", "contact": "bench@example.com"})))
            cpu2 = server_cpu(proc.pid)
            consent["server_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000 / max(1, consent["sent"]), 2)
            dsr["server_cpu_ms_per_request"] = round((cpu2 - cpu1) * 1000 / max(1, dsr["sent"]), 2)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
            log.close()

    result = {"backend": backend, "workers": args.workers, "loadavg_before_after": [load_before, list(os.getloadavg())], "rate": args.rate, "duration_s": args.duration, "consent_lookup": consent,
              "dsr_submission": dsr, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    print(f"workers {args.workers}; load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("| backend | scenario | sent | ok | achieved req/s | p50 ms | p99 ms | max ms | server CPU ms/req | goal p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r, goal in (("consent lookup", consent, "< 10 ms"), ("DSR submission", dsr, "< 50 ms")):
        print(f"| {backend} | {name} | {r['sent']} | {r['ok']} | {r['achieved_rate']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['max_ms']} | {r['server_cpu_ms_per_request']} | {goal} |")
    if any(r["errors"] for r in (consent, dsr)):
        print("errors:", {"consent": consent["errors"], "dsr": dsr["errors"]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    existing[backend] = result
    args.out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
