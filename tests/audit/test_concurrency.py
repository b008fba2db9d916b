"""Two processes appending to one real database at the same time produce one consistent log."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from siloguard.audit.log import AuditLog
from siloguard.storage import create_engine, upgrade_database
from tests.audit._workers import append_worker
from tests.audit.helpers import Keys
from tests.storage.databases import BACKENDS, fresh_database

PER_PROCESS = 150


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_appending_concurrently_make_one_consistent_log(tmp_path: Path, keys: Keys, backend: str) -> None:
    with fresh_database(backend, tmp_path) as url:
        engine = create_engine(url)
        upgrade_database(engine)
        ctx = multiprocessing.get_context("spawn")
        start, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=append_worker, args=(url, str(keys.private_path), w, PER_PROCESS, start, results))
            for w in range(2)
        ]
        for p in procs:
            p.start()
        reports, spans = {}, {}
        for _ in procs:
            worker, done, span, error = results.get(timeout=120)
            assert error is None, f"worker {worker} failed: {error}"
            reports[worker], spans[worker] = done, span
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        try:
            # they really ran at the same time: each started before the other finished
            assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
            log = AuditLog(engine)
            # one log: every index used exactly once, no gap, no fork
            indices = sorted(i for done in reports.values() for _, i in done)
            assert indices == list(range(2 * PER_PROCESS)) and log.size() == 2 * PER_PROCESS
            # each event sits where its writer was told, and each writer's order is kept
            stored = {s.event.event_id: s.index for s in log.iter_events()}
            for done in reports.values():
                assert [stored[event_id] for event_id, _ in done] == [i for _, i in done]
                assert [i for _, i in done] == sorted(i for _, i in done)
            # heads from both writers form one numbered chain over one tree
            heads = log.heads()
            assert [h.seq for h in heads] == list(range(len(heads)))
            sizes = [0] + [h.tree_size for h in heads]
            # a head is due 25 events after the last one, whoever appended them; batches of
            # at most 6 can overshoot by 5
            assert all(25 <= b - a <= 30 for a, b in zip(sizes, sizes[1:])), sizes
            report = log.verify(keys.public_key)
            assert report.tree_size == 2 * PER_PROCESS
            owner = {i: worker for worker, done in reports.items() for _, i in done}
            switches = sum(owner[i] != owner[i + 1] for i in range(len(owner) - 1))
            print(f"\n{backend}: {len(heads)} heads; the log switched writer {switches} times")
        finally:
            engine.dispose()
