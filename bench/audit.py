"""Audit log benchmarks: durable append throughput (group commit), single-append latency,
`siloguard audit verify` on 1M events, and inclusion-proof generation at 1M events.

    .venv/bin/python bench/audit.py                       # SQLite; PostgreSQL too if configured
    .venv/bin/python bench/audit.py --events 200000      # a smaller log for a quick look
    SILOGUARD_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test .venv/bin/python bench/audit.py

Prints a markdown table and writes bench/results/audit.json. Goals (issue 5): >= 20k events/s
durable appends with group commit on a SQLite file; `audit verify` on 1M events < 10 s;
proof generation < 1 ms at 1M events. Events are built before the clock starts (building and
validating an event is the caller's cost); each append call canonicalises, hashes, writes
the leaves and Merkle nodes and commits durably (SQLite WAL with synchronous=FULL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from siloguard.audit import AuditEvent, GroupCommitSink, new_event_id
from siloguard.audit.heads import generate_keypair, load_public_key, load_signing_key
from siloguard.audit.log import AuditLog
from siloguard.audit.merkle import leaf_hash, verify_inclusion
from siloguard.storage import create_engine, upgrade_database

ROOT = Path(__file__).resolve().parents[1]
STORES = ("france", "germany", "united-kingdom-1", "united-kingdom-2", "international")
PURPOSES = ("recommendation", "analytics")
T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _prototypes() -> list[AuditEvent]:
    out = []
    for i in range(200):
        store = STORES[i % len(STORES)]
        deny = i % 9 == 0
        out.append(AuditEvent(
            actor=f"store:{store}", action="gate.train", resource=f"silo:{store}/transactions",
            purpose=PURPOSES[i % 2], decision="deny" if deny else "allow",
            reason="consent-missing" if deny else "policy-allow",
            counts={"records_in": 1000 + i, "records_kept": 0 if deny else 900 + i}, round=i % 50, store=store,
        ))
    return out


PROTOS = _prototypes()


def batch_of(n: int, offset: int) -> list[AuditEvent]:
    """n distinct valid events (each validated on construction, as callers' are)."""
    return [replace(PROTOS[(offset + j) % len(PROTOS)], event_id=new_event_id(), time=T0 + timedelta(seconds=offset + j))
            for j in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def fresh_pg(base: str) -> tuple[str, Any]:
    schema = "sgbench_" + secrets.token_hex(4)
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = sa.engine.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()

    return url, drop


def throughput(log: AuditLog, total: int, batch: int, *, progress: bool = False) -> dict[str, Any]:
    """Append `total` events in transactions of `batch` (group commit); time only the appends."""
    spent, done = 0.0, 0
    while done < total:
        events = batch_of(min(batch, total - done), done)
        t = time.perf_counter()
        log.append(events)
        spent += time.perf_counter() - t
        done += len(events)
        if progress and done % 100_000 == 0:
            print(f"  appended {done:,} events ({done / spent:,.0f}/s)", file=sys.stderr)
    return {"events": total, "batch": batch, "seconds": round(spent, 3), "events_per_s": round(total / spent)}


def threaded_sink(log: AuditLog, threads: int, per_thread: int) -> dict[str, Any]:
    """Many threads each calling record() and waiting for durability: GroupCommitSink batches them."""
    sink = GroupCommitSink(log, max_batch=1000)
    prepared = [batch_of(per_thread, 10_000_000 + t * per_thread) for t in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(events: list[AuditEvent]) -> None:
        barrier.wait()
        for e in events:
            sink.record(e)

    workers = [threading.Thread(target=run, args=(p,)) for p in prepared]
    for w in workers:
        w.start()
    barrier.wait()
    t = time.perf_counter()
    for w in workers:
        w.join()
    spent = time.perf_counter() - t
    total = threads * per_thread
    return {"threads": threads, "events": total, "seconds": round(spent, 3), "events_per_s": round(total / spent),
            "commits": sink.commits, "mean_events_per_commit": round(total / sink.commits, 1)}


def single_latency(log: AuditLog, n: int) -> dict[str, Any]:
    lat = []
    for e in batch_of(n, 20_000_000):
        t = time.perf_counter()
        log.record(e)
        lat.append((time.perf_counter() - t) * 1000)
    return {"appends": n, "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
            "mean_ms": round(statistics.fmean(lat), 3)}


def bench_backend(name: str, url: str, signer: Any, *, total: int, singles: int) -> dict[str, Any]:
    engine = create_engine(url)
    upgrade_database(engine)
    try:
        log = AuditLog(engine, signer=signer, head_every_events=100_000, head_every_seconds=3600)
        out = {"group_commit": throughput(log, total, 1000), "threads": threaded_sink(log, 64, 500),
               "single": single_latency(log, singles)}
        print(f"  {name}: {out}", file=sys.stderr)
        return out
    finally:
        engine.dispose()


def bench_million(workdir: Path, signer: Any, public_path: Path, events: int) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'million.db'}"
    engine = create_engine(url)
    upgrade_database(engine)
    log = AuditLog(engine, signer=signer, head_every_events=100_000, head_every_seconds=0)
    print(f"building a {events:,}-event log ...", file=sys.stderr)
    build = throughput(log, events, 1000, progress=True)
    head = log.sign_head()
    size_mb = sum(p.stat().st_size for p in workdir.glob("million.db*")) / 1e6

    # `siloguard audit verify` as a user runs it: a fresh process, the whole log recomputed
    cmd = [sys.executable, "-c", "from siloguard.audit.cli import audit_app; audit_app()",
           "verify", "--db", url, "--public-key", str(public_path)]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    verify_s = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"audit verify failed: {done.stderr}")
    t = time.perf_counter()
    log.verify(load_public_key(public_path))
    verify_in_process_s = time.perf_counter() - t

    # proofs: random events, each proof generated from the node store and then checked
    rng = random.Random(0)
    indices = [rng.randrange(head.tree_size) for _ in range(1000)]
    with engine.connect() as conn:
        ids = {i: conn.execute(sa.text("SELECT event_id FROM audit_events WHERE seq = :s"), {"s": i}).scalar_one() for i in indices}
    public_key = load_public_key(public_path)
    for i in indices[:50]:  # warm up, and check the proofs are right
        proof = log.prove(ids[i])
        proof.verify(public_key, ids[i])
    prove_ms, path_ms, verify_ms = [], [], []
    for i in indices:
        t = time.perf_counter()
        proof = log.prove(ids[i])
        prove_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        path = log.inclusion_path(i, head.tree_size)
        path_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        verify_inclusion(leaf_hash(proof.leaf_input), i, head.tree_size, path, head.root_hash)
        verify_ms.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    log.consistency_proof(head.tree_size // 3, head.tree_size)
    consistency_ms = (time.perf_counter() - t) * 1000
    engine.dispose()
    return {
        "events": head.tree_size, "database_mb": round(size_mb), "build": build,
        "audit_verify_cli_s": round(verify_s, 2), "verify_in_process_s": round(verify_in_process_s, 2),
        "prove_p50_ms": round(pct(prove_ms, 50), 3), "prove_p99_ms": round(pct(prove_ms, 99), 3),
        "inclusion_path_p50_ms": round(pct(path_ms, 50), 3), "inclusion_path_p99_ms": round(pct(path_ms, 99), 3),
        "verify_proof_p50_ms": round(pct(verify_ms, 50), 3), "consistency_proof_ms": round(consistency_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the log for verify/proof figures")
    parser.add_argument("--throughput-events", type=int, default=200_000)
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--pg", default=os.environ.get("SILOGUARD_TEST_DATABASE_URL"), help="PostgreSQL URL (default: $SILOGUARD_TEST_DATABASE_URL)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="siloguard-bench-audit-", dir=os.environ.get("TMPDIR")) as tmp:
        workdir = Path(tmp)
        generate_keypair(workdir / "audit.key", workdir / "audit.pub")
        signer = load_signing_key(workdir / "audit.key")
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                        "platform": platform.platform()},
            "command": " ".join(
                ([f"SILOGUARD_TEST_DATABASE_URL={args.pg}"] if args.pg and args.pg == os.environ.get("SILOGUARD_TEST_DATABASE_URL") else [])
                + [".venv/bin/python", "bench/audit.py", *sys.argv[1:]]
            ),
        }
        print("SQLite file ...", file=sys.stderr)
        results["sqlite"] = bench_backend("sqlite", f"sqlite:///{workdir / 'bench.db'}", signer,
                                          total=args.throughput_events, singles=args.singles)
        if args.pg:
            url, drop = fresh_pg(args.pg)
            try:
                eng = sa.create_engine(args.pg)
                with eng.connect() as c:
                    results["machine"]["postgresql"] = c.exec_driver_sql("SHOW server_version").scalar()
                eng.dispose()
                print("PostgreSQL ...", file=sys.stderr)
                results["postgresql"] = bench_backend("postgresql", url, signer, total=args.throughput_events // 2,
                                                      singles=args.singles)
            finally:
                drop()
        results["million"] = bench_million(workdir, signer, workdir / "audit.pub", args.events)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(r: dict[str, Any]) -> str:
    m = r["million"]
    rows = [("| measure | SQLite file | PostgreSQL | goal |"), ("|---|---:|---:|---|")]
    pg = r.get("postgresql")

    def cell(backend: dict[str, Any] | None, *keys: str, fmt: str = "{:,}") -> str:
        if backend is None:
            return "n/a"
        value: Any = backend
        for k in keys:
            value = value[k]
        return fmt.format(value)

    s = r["sqlite"]
    rows.append(f"| durable appends, group commit (1,000 events per transaction), events/s | {cell(s, 'group_commit', 'events_per_s')} "
                f"| {cell(pg, 'group_commit', 'events_per_s')} | >= 20,000 on SQLite |")
    rows.append(f"| durable appends, 64 threads through GroupCommitSink, events/s (events per commit) | "
                f"{cell(s, 'threads', 'events_per_s')} ({cell(s, 'threads', 'mean_events_per_commit')}) | "
                f"{cell(pg, 'threads', 'events_per_s')} ({cell(pg, 'threads', 'mean_events_per_commit')}) | |")
    rows.append(f"| single-event append (own transaction), p50 / p99 ms | {cell(s, 'single', 'p50_ms')} / {cell(s, 'single', 'p99_ms')} "
                f"| {cell(pg, 'single', 'p50_ms')} / {cell(pg, 'single', 'p99_ms')} | |")
    rows.append(f"| building the {m['events']:,}-event log, events/s | {m['build']['events_per_s']:,} | | |")
    rows.append(f"| `siloguard audit verify` on {m['events']:,} events (new process), s | {m['audit_verify_cli_s']} | | < 10 s |")
    rows.append(f"| inclusion proof at {m['events']:,} events (`AuditLog.prove`), p50 / p99 ms | {m['prove_p50_ms']} / {m['prove_p99_ms']} | | < 1 ms |")
    rows.append(f"| inclusion path only, p50 / p99 ms | {m['inclusion_path_p50_ms']} / {m['inclusion_path_p99_ms']} | | |")
    rows.append(f"| consistency proof ({m['events'] // 3:,} -> {m['events']:,}), ms | {m['consistency_proof_ms']} | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
