"""The data-flow gate: masking throughput and policy latency, one run.

    .venv/bin/python bench/gate.py

1. **Masking**: 1M customer-profile rows through ``Gate.admit`` (store operator, purpose
   ``analytics.reporting``: name, email, phone, street, city, postcode and birth date
   masked by category, customer id pseudonymised, country and locale clear). Faker makes
   about 16k profiles/s, so ``--profiles`` profiles are generated and tiled to ``--rows``,
   with fresh customer ids: every id is distinct, every other value repeats rows/profiles
   times. A second pass makes every value distinct (suffixes), the worst case for the
   per-distinct-value operators.
2. **Naive Presidio**: per-cell ``AnalyzerEngine.analyze`` + ``AnonymizerEngine.anonymize``
   over the same seven columns on a ``--naive-sample`` row sample, all predefined English
   recognizers, offline blank spaCy pipeline (no NER model), extrapolated to ``--rows``;
   with the share of cells in which it found anything, per column.
3. **Policy**: ``PolicyEnforcer.decide`` latency p50/p99 with ``--rules`` rules (the shipped
   ones plus store-specific rules for ``--rules``/6 stores), uncached and cached.

Prints a markdown table and writes ``bench/results/gate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from siloguard.data.profiles import generate_profiles
from siloguard.policies.enforcer import POLICY_PATH, AccessRequest, PolicyEnforcer
from siloguard.policies.gate import (
    Gate,
    InMemoryConsentSource,
    MemoryRecorder,
    Principal,
)
from siloguard.policies.taxonomy import load_taxonomy
from siloguard.privacy.keys import FileKeyStore, StoreKeys
from siloguard.privacy.masking import Masker, blank_pipeline, configure_offline

STORE = "united-kingdom-1"
MASKED = ["name", "email", "phone", "street_address", "city", "postcode", "birth_date"]
COUNTRIES = ["United Kingdom"] * 6 + ["Germany", "France", "EIRE", "Spain"]


def make_profiles(n_profiles: int, n_rows: int, *, distinct: bool) -> tuple[pd.DataFrame, float]:
    rng = np.random.default_rng(0)
    base_ids = np.arange(100_000, 100_000 + n_profiles)
    countries = pd.Series(rng.choice(COUNTRIES, n_profiles), index=base_ids)
    t = time.perf_counter()
    base = generate_profiles(countries, seed=0)
    gen_s = time.perf_counter() - t
    reps = -(-n_rows // n_profiles)
    frame = pd.concat([base] * reps, ignore_index=True).iloc[:n_rows].copy()
    frame["customer_id"] = np.arange(1_000_000, 1_000_000 + n_rows, dtype="int64")
    if distinct:
        suffix = pd.Series(np.arange(n_rows), dtype="int64").astype(str)
        for col in ("name", "street_address", "city", "postcode", "phone"):
            frame[col] = frame[col] + " " + suffix
        frame["email"] = suffix + "." + frame["email"]
        frame["birth_date"] = pd.to_datetime(frame["birth_date"]) + pd.to_timedelta(np.arange(n_rows) % 3650, unit="D")
    return frame, gen_s


def make_gate(tmp: Path, enforcer: PolicyEnforcer) -> Gate:
    keys = StoreKeys(FileKeyStore(tmp / "keys"), STORE)
    keys.init()
    from siloguard.privacy.pseudonyms import Pseudonymiser

    return Gate(
        store=STORE,
        enforcer=enforcer,
        consent=InMemoryConsentSource(),
        recorder=MemoryRecorder(),
        pseudonymiser=Pseudonymiser(keys),
        masker=Masker.for_store(keys, cache_dir=tmp / "cache"),
        store_country="GB",
    )


def bench_masking(args: argparse.Namespace, tmp: Path) -> dict:
    enforcer = PolicyEnforcer()
    enforcer.assign_role("staff:bench", "store_operator", STORE)
    gate = make_gate(tmp, enforcer)
    operator = Principal("staff:bench", "store_operator")
    out: dict = {}
    for label, distinct in (("tiled", False), ("distinct", True)):
        frame, gen_s = make_profiles(args.profiles, args.rows, distinct=distinct)
        gate.admit(operator, "analytics.reporting", "customer_profiles", frame.iloc[:1000])  # warm-up
        t, c = time.perf_counter(), time.process_time()
        gated = gate.admit(operator, "analytics.reporting", "customer_profiles", frame)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        assert gated.rows_out == len(frame)
        assert not set(gated.frame["email"].head(1000)) & set(frame["email"].head(1000))
        out[label] = {
            "rows": len(frame),
            "profiles_generated": args.profiles,
            "generate_s": round(gen_s, 2),
            "distinct_emails": int(frame["email"].nunique()),
            "gate_s": round(secs, 3),
            "rows_per_s": round(len(frame) / secs),
            "gate_cpu_s": round(cpu, 3),
            "rows_per_cpu_s": round(len(frame) / cpu),
            "values_masked": int(sum(gated.values_masked.values())),
        }
        print(f"  masking {label}: {len(frame):,} rows in {secs:.2f} s", file=sys.stderr)
        del frame, gated
    return out


def bench_naive(args: argparse.Namespace, tmp: Path) -> dict:
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    configure_offline()
    model = blank_pipeline(tmp / "cache", "en")
    nlp = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": str(model)}]}
    ).create_engine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
    anonymizer = AnonymizerEngine()
    frame, _ = make_profiles(min(args.profiles, args.naive_sample), args.naive_sample, distinct=False)
    found = {c: 0 for c in MASKED}
    analyzer.analyze(text="warm up", language="en")
    t, c = time.perf_counter(), time.process_time()
    for row in frame[MASKED].itertuples(index=False):
        for col, value in zip(MASKED, row):
            text = str(value)
            results = analyzer.analyze(text=text, language="en")
            anonymizer.anonymize(text=text, analyzer_results=results)
            found[col] += bool(results)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    rate = len(frame) / secs
    return {
        "rows": len(frame),
        "recognizers": len(registry.recognizers),
        "seconds": round(secs, 2),
        "rows_per_s": round(rate, 1),
        "cpu_s": round(cpu, 2),
        "rows_per_cpu_s": round(len(frame) / cpu, 1),
        "extrapolated_s_for_rows": round(args.rows / rate),
        "cells_with_a_finding": {c: round(n / len(frame), 3) for c, n in found.items()},
    }


def synthetic_policy(path: Path, n_rules: int) -> tuple[int, list[str]]:
    """The shipped policy plus store-specific rules up to n_rules; returns (rules, stores)."""
    tax = load_taxonomy()
    shipped = [line for line in POLICY_PATH.read_text().splitlines() if line.startswith("p,")]
    rng = random.Random(0)
    cats = sorted(tax.data_categories)
    uses = sorted(tax.data_uses)
    lines = list(shipped)
    stores: list[str] = []
    n_store = 0
    while len(lines) < n_rules:
        store = f"store-{n_store:04d}"
        stores.append(store)
        n_store += 1
        for role in ("store_operator", "store_trainer", "store_operator", "compliance_officer", "store_operator", "store_trainer"):
            if len(lines) >= n_rules:
                break
            effect = "deny" if rng.random() < 0.2 else "allow"
            action = rng.choice(["read", "export", "train", "erase"])
            lines.append(f"p, {role}, {store}, {rng.choice(cats)}, {action}, {rng.choice(uses)}, {effect}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines), stores


def _percentiles(ns: list[int]) -> dict:
    arr = np.array(ns) / 1000.0
    return {"p50_us": round(float(np.percentile(arr, 50)), 1), "p99_us": round(float(np.percentile(arr, 99)), 1), "n": len(ns)}


def bench_policy(args: argparse.Namespace, tmp: Path) -> dict:
    path = tmp / "policy-3000.csv"
    _, stores = synthetic_policy(path, args.rules)
    t = time.perf_counter()
    enforcer = PolicyEnforcer(path, cache_size=100_000)
    load_s = time.perf_counter() - t
    for k, store in enumerate(stores):
        enforcer.assign_role(f"staff:op{k}", "store_operator", store)
        enforcer.assign_role(f"client:tr{k}", "store_trainer", store)
    enforcer.assign_role("staff:dpo", "dpo", "*")
    tax = load_taxonomy()
    cats, uses = sorted(tax.data_categories), sorted(tax.data_uses)
    rng = random.Random(1)

    def random_request() -> AccessRequest:
        k = rng.randrange(len(stores))
        role, principal = rng.choice([("store_operator", f"staff:op{k}"), ("store_trainer", f"client:tr{k}"), ("dpo", "staff:dpo")])
        return AccessRequest(role, principal, stores[k], rng.choice(cats), rng.choice(["read", "export", "train", "erase"]), rng.choice(uses))

    requests = [random_request() for _ in range(args.policy_requests)]
    allowed = 0
    uncached = []
    for req in requests:
        t0 = time.perf_counter_ns()
        allowed += enforcer.decide(req, use_cache=False).allowed
        uncached.append(time.perf_counter_ns() - t0)
    hot = requests[:500]
    for req in hot:
        enforcer.decide(req)
    cached = []
    for i in range(args.policy_requests * 10):
        req = hot[i % len(hot)]
        t0 = time.perf_counter_ns()
        enforcer.decide(req)
        cached.append(time.perf_counter_ns() - t0)
    return {
        "rules": len(enforcer.rules()),
        "stores": len(stores),
        "bindings": len(enforcer.bindings()),
        "load_s": round(load_s, 2),
        "allowed_share": round(allowed / len(requests), 3),
        "uncached": _percentiles(uncached),
        "cached": _percentiles(cached),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--naive-sample", type=int, default=5_000)
    parser.add_argument("--rules", type=int, default=3_000)
    parser.add_argument("--policy-requests", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "gate.json")
    parser.add_argument("--policy-only", action="store_true",
                        help="only the policy part; prints its table and writes bench/results/gate_policy.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    if args.policy_only:
        with tempfile.TemporaryDirectory() as d:
            policy = bench_policy(args, Path(d))
        out = args.out.with_name("gate_policy.json")
        policy |= {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                   "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)}
        out.write_text(json.dumps(policy, indent=2) + "\n")
        for kind in ("uncached", "cached"):
            p = policy[kind]
            print(f"| policy decide, {policy['rules']:,} rules, {kind} | p50 {p['p50_us']} us, p99 {p['p99_us']} us |")
        print(f"| load average (1 min) before / after | {policy['loadavg_1m_before']} / {policy['loadavg_1m_after']} |")
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("masking ...", file=sys.stderr)
        masking = bench_masking(args, tmp)
        print("naive presidio ...", file=sys.stderr)
        naive = bench_naive(args, tmp)
        print("policy ...", file=sys.stderr)
        policy = bench_policy(args, tmp)

    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/gate.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # other jobs on the machine slow every figure; these say how busy it was
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        "masking": masking,
        "naive_presidio": naive,
        "policy": policy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    tiled, distinct = masking["tiled"], masking["distinct"]
    print("| measure | wall clock | CPU time |")
    print("|---|---|---|")
    for label, m in ((f"tiled from {tiled['profiles_generated']:,} profiles", tiled), ("every value distinct", distinct)):
        print(
            f"| gate, {m['rows']:,} rows, {label} | {m['gate_s']} s, **{m['rows_per_s']:,} rows/s** "
            f"| {m['gate_cpu_s']} s, {m['rows_per_cpu_s']:,} rows/s |"
        )
    print(
        f"| naive per-cell Presidio, {naive['rows']:,}-row sample ({naive['recognizers']} recognizers) "
        f"| {naive['rows_per_s']:,} rows/s (~{naive['extrapolated_s_for_rows']:,} s for {args.rows:,} rows) "
        f"| {naive['rows_per_cpu_s']:,} rows/s |"
    )
    print(
        f"| speed-up, gate (every value distinct) vs naive | {distinct['rows_per_s'] / naive['rows_per_s']:,.0f}x "
        f"| {distinct['rows_per_cpu_s'] / naive['rows_per_cpu_s']:,.0f}x |"
    )
    found = ", ".join(f"{c} {v:.0%}" for c, v in naive["cells_with_a_finding"].items())
    print(f"| naive: cells where Presidio found anything | {found} | |")
    for kind in ("uncached", "cached"):
        p = policy[kind]
        print(f"| policy decide, {policy['rules']:,} rules, {kind} | p50 {p['p50_us']} us, p99 {p['p99_us']} us | |")
    load = result["machine"]
    print(f"| load average (1 min) before / after | {load['loadavg_1m_before']} / {load['loadavg_1m_after']} | |")

if __name__ == "__main__":
    main()
