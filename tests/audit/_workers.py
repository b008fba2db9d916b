"""Child-process entry points for the concurrency tests (imported by spawned processes)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from siloguard.audit.heads import load_signing_key
from siloguard.audit.log import AuditLog
from siloguard.storage import create_engine
from tests.audit.helpers import gate_event


def append_worker(url: str, key_path: str, worker: int, total: int, start: Any, results: Any) -> None:
    """Append ``total`` events in random small batches, signing heads every 25 events;
    report (event id, index) pairs in the order this process appended them, and when
    (CLOCK_MONOTONIC, shared by all processes) its first append began and its last ended."""
    engine = create_engine(url)
    log = AuditLog(engine, signer=load_signing_key(Path(key_path)), head_every_events=25, head_every_seconds=0)
    rng = random.Random(worker)
    done: list[tuple[str, int]] = []
    try:
        start.wait()  # both processes begin together
        began = time.monotonic()
        i = 0
        while i < total:
            batch = [gate_event(100_000 * (worker + 1) + i + j) for j in range(min(rng.randint(1, 6), total - i))]
            indices = log.append(batch)
            done.extend(zip((e.event_id for e in batch), indices))
            i += len(batch)
        results.put((worker, done, (began, time.monotonic()), None))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        results.put((worker, done, None, repr(exc)))
    finally:
        engine.dispose()
