"""Consent filter benchmark: the consented subject set for a purpose over 1M subjects.

    .venv/bin/python bench/consent.py                      # SQLite file; PostgreSQL too if configured
    SILOGUARD_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test .venv/bin/python bench/consent.py

Fills a fresh registry with events for --subjects subjects (default 1,000,000): each grants
``personalize.profiling`` (5% at the parent key ``personalize``, which covers it), 10% later
withdraw it, 30% also grant first-party marketing and 5% of all send a GPC opt-out: about
1.45 events per subject. Then times, best and median of --repeat runs each:

* ``ConsentRegistry.consented(purpose)``: every subject with a live consent now (read from
  the current-state table, ``consent_state``: the purpose's grants and the parent keys' rows);
* ``subjects_with_basis(purpose, all subjects, at)``: the gate's question for a flow holding
  every subject (the same query, intersected with the asked set in Python);
* the same for 5,000 subjects (a store's round): the query filters by an IN list then;
* ``consented(purpose, at)`` a year before the end of the history (an as-of query: it reads
  the events, the state table only knows "now");
* ``state_differences()``: the check of ``siloguard check`` (rebuild from the events, compare);
* ``StoreConsent.subjects_with_basis`` for 1M raw customer ids: adds the keyed subject
  reference (HMAC-SHA256) of each id.

Goals: the consented set over 1M subjects in < 1 s (issue 4), < 0.3 s (issue 17). The table is ANALYZEd after
the fill (planner statistics, as autovacuum would provide). Prints a markdown table and
writes bench/results/consent.json. On PostgreSQL it uses a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from siloguard.policies.consent import ConsentRegistry, StoreConsent
from siloguard.privacy.keys import FileKeyStore, StoreKeys
from siloguard.storage.db import create_engine, upgrade_database

PROFILING = "personalize.profiling"
MARKETING = "marketing.advertising.first_party.targeted"


def events_for(n: int, seed: int) -> list[tuple[str, str, str, str, str | None, datetime]]:
    rng = np.random.default_rng(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    subjects = [f"s{i:07x}" for i in range(n)]
    granted_at = rng.integers(0, 365 * 24 * 60, n)
    out = []
    parent = rng.random(n) < 0.05
    withdraw = rng.random(n) < 0.10
    marketing = rng.random(n) < 0.30
    gpc = rng.random(n) < 0.05
    for i, s in enumerate(subjects):
        at = t0 + timedelta(minutes=int(granted_at[i]))
        out.append((s, "personalize" if parent[i] else PROFILING, "grant", "store", "v1", at))
        if withdraw[i]:
            out.append((s, PROFILING, "withdraw", "web", "v1", at + timedelta(days=30)))
        if marketing[i]:
            out.append((s, MARKETING, "grant", "web", "v1", at))
        if gpc[i]:
            out.append((s, "third_party_sharing", "opt_out", "gpc", None, at + timedelta(days=1)))
    return out


def timed(fn, repeat: int) -> tuple[list[float], object]:  # noqa: ANN001
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def run(url: str, label: str, args: argparse.Namespace, tmp: Path) -> dict:
    engine = create_engine(url)
    upgrade_database(engine)
    registry = ConsentRegistry(engine)
    events = events_for(args.subjects, args.seed)
    start = time.perf_counter()
    for i in range(0, len(events), 100_000):
        registry.record_events(events[i : i + 100_000])
    fill = time.perf_counter() - start
    # Planner statistics, as autovacuum (PostgreSQL) or a periodic ANALYZE would have them: on
    # a freshly bulk-loaded table PostgreSQL has none and scans the table for an IN lookup.
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE consent_events" if engine.dialect.name == "postgresql" else "ANALYZE"))
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE consent_state"))
    expected = sum(1 for e in events if e[1] in (PROFILING, "personalize") and e[2] == "grant") - sum(
        1 for e in events if e[1] == PROFILING and e[2] == "withdraw"
    )
    now = datetime(2030, 1, 1, tzinfo=UTC)
    every = [f"s{i:07x}" for i in range(args.subjects)]
    some = every[:: max(1, args.subjects // 5000)][:5000]
    rows: dict[str, dict] = {}
    t, got = timed(lambda: registry.consented(PROFILING, now), args.repeat)
    assert len(got) == expected, (len(got), expected)  # type: ignore[arg-type]
    rows["consented(purpose), all subjects"] = {"best_s": min(t), "median_s": statistics.median(t), "result": len(got)}  # type: ignore[arg-type]
    t, got = timed(lambda: registry.subjects_with_basis(PROFILING, every, now), args.repeat)
    rows["subjects_with_basis, 1M asked"] = {"best_s": min(t), "median_s": statistics.median(t), "result": len(got)}  # type: ignore[arg-type]
    t, got = timed(lambda: registry.subjects_with_basis(PROFILING, some, now), args.repeat)
    rows["subjects_with_basis, 5,000 asked"] = {"best_s": min(t), "median_s": statistics.median(t), "result": len(got)}  # type: ignore[arg-type]
    past = datetime(2024, 6, 1, tzinfo=UTC)
    t, got = timed(lambda: registry.consented(PROFILING, past), max(1, args.repeat // 2))
    rows["consented(purpose) as of 2024-06-01 (events)"] = {"best_s": min(t), "median_s": statistics.median(t), "result": len(got)}  # type: ignore[arg-type]
    t, diff = timed(registry.state_differences, 1)
    assert diff["missing"] == diff["extra"] == 0, diff  # type: ignore[index]
    rows["state check: rebuild from events and compare"] = {"best_s": min(t), "median_s": statistics.median(t), "result": diff["rows"]}  # type: ignore[index]
    keys = StoreKeys(FileKeyStore(tmp / f"keys-{label}"), "bench")
    keys.init()
    view = StoreConsent(registry, keys)
    raw = [str(10_000_000 + i) for i in range(args.subjects)]
    t, _ = timed(lambda: view.subjects(raw), 1)
    rows["subject reference (HMAC) of 1M customer ids"] = {"best_s": min(t), "median_s": statistics.median(t), "result": len(raw)}
    with engine.connect() as conn:
        n_events = conn.execute(sa.text("select count(*) from consent_events")).scalar_one()
    registry.close()
    return {"backend": label, "subjects": args.subjects, "events": int(n_events), "fill_s": fill, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "consent.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results.append(run(f"sqlite:///{tmp / 'consent.db'}", "SQLite file", args, tmp))
        pg = os.environ.get("SILOGUARD_TEST_DATABASE_URL")
        if pg:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(pg)
            with admin.begin() as conn:
                conn.execute(sa.text(f"create schema {schema}"))
            try:
                url = pg + ("&" if "?" in pg else "?") + f"options=-csearch_path%3D{schema}"
                results.append(run(url, "PostgreSQL", args, tmp))
            finally:
                with admin.begin() as conn:
                    conn.execute(sa.text(f"drop schema {schema} cascade"))
                admin.dispose()
    print(f"\n{args.subjects:,} subjects; best / median of {args.repeat} runs\n")
    print("| backend | measure | best | median | result |")
    print("|---|---|---|---|---|")
    for res in results:
        for name, row in res["rows"].items():
            print(f"| {res['backend']} | {name} | {row['best_s']:.3f} s | {row['median_s']:.3f} s | {row['result']:,} |")
        print(f"| {res['backend']} | fill ({res['events']:,} events, batches of 100k) | {res['fill_s']:.1f} s | | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": os.getloadavg(), "results": results}
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
