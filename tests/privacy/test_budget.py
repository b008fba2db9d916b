"""The per-store privacy ledger: persistence, validation, and skipping stores at their cap."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from siloguard.runs import RunManifest
from siloguard.config import Settings
from siloguard.errors import PrivacyBudgetError
from siloguard.privacy.budget import BudgetLedger, ledger_table
from siloguard.privacy.dp import epsilon_of

from tests.storage.databases import BACKENDS, fresh_database


@pytest.fixture(params=BACKENDS)
def ledger_url(request, tmp_path: Path):
    """A fresh database per backend (PostgreSQL: own schema, dropped afterwards)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _record(ledger: BudgetLedger, store: str, history, server_round: int = 1, cap: float = 8.0):
    return ledger.record_round(
        store=store, accountant="rdp", history=history, delta=1e-5,
        epsilon=epsilon_of("rdp", history, 1e-5), epsilon_cap=cap, server_round=server_round,
    )


def test_when_the_ledger_is_reopened_then_each_store_resumes_where_it_was(ledger_url: str) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    first = BudgetLedger(ledger_url)
    _record(first, store, [(1.0, 0.1, 20)], 1)
    _record(first, store, [(1.0, 0.1, 40)], 2)
    first.engine.dispose()

    reopened = BudgetLedger(ledger_url)  # a restarted federation
    entry = reopened.load(store)
    assert entry is not None
    assert entry.history == [(1.0, 0.1, 40)]
    assert entry.rounds == 2
    assert entry.steps == 40
    assert entry.epsilon == pytest.approx(epsilon_of("rdp", [(1.0, 0.1, 40)], 1e-5))
    assert [r["server_round"] for r in reopened.round_history(store)] == [1, 2]


def test_when_a_round_would_pass_the_cap_then_it_is_not_recorded(ledger_url: str) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    ledger = BudgetLedger(ledger_url)
    with pytest.raises(PrivacyBudgetError, match="cap"):
        _record(ledger, store, [(0.5, 0.5, 500)], cap=1.0)
    assert ledger.load(store) is None


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("history", "not json", "does not parse"), ("history", "[[0, 0.1, 5]]", "invalid"), ("epsilon", 0.001, "does not add up")],
)
def test_when_a_ledger_row_is_tampered_then_loading_refuses_it(tmp_path: Path, column, value, message) -> None:
    ledger = BudgetLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    _record(ledger, "germany", [(1.0, 0.1, 20)])
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(ledger_table).where(ledger_table.c.store == "germany").values({column: value}))
    with pytest.raises(PrivacyBudgetError, match=message):
        ledger.load("germany")


def test_when_a_store_is_nearly_spent_then_the_federation_skips_it_and_finishes(tiny_settings: Settings) -> None:
    from siloguard.clients.store import load_store
    from siloguard.federation.runner import prepare_run, run_federation
    from siloguard.privacy.dp import effective_sample_rate, steps_per_round, store_delta

    settings = tiny_settings.with_overrides(
        privacy={"enabled": True, "sample_rate": 0.25, "noise_multiplier": 1.0, "epsilon_cap": 20.0},
        federation={"rounds": 2},
    )
    prepared = prepare_run(settings)
    run = RunManifest.read(settings.work_dir)
    germany = load_store("germany", prepared.stores["germany"], run.require_catalogue(), str(run.split_date), str(run.end_date))
    # Germany has already spent almost all of a cap of 20 in an earlier run.
    q = effective_sample_rate(settings.privacy, germany.n_users)
    per_round = steps_per_round(settings.privacy, settings.model.local_epochs, germany.n_users)
    delta = store_delta(settings.privacy, germany.n_users)
    rounds = 1
    while epsilon_of("rdp", [(1.0, q, (rounds + 1) * per_round)], delta) <= 20.0:
        rounds += 1
    spent = [(1.0, q, rounds * per_round)]  # one more round would pass the cap
    eps = epsilon_of("rdp", spent, delta)
    assert eps <= 20.0 < epsilon_of("rdp", [(1.0, q, (rounds + 1) * per_round)], delta)
    ledger = BudgetLedger(settings.database.url)
    ledger.record_round(store="germany", accountant="rdp", history=spent, delta=delta, epsilon=eps,
                        epsilon_cap=20.0, server_round=0)

    outcome = run_federation(settings, prepared)

    for report in outcome.reports.values():
        assert "germany" in report.skipped
        assert "germany" not in report.train
        assert "germany" in report.evaluate  # still serves recommendations
        assert sorted(report.train) == ["france", "united-kingdom"]
    entries = {e.store: e for e in BudgetLedger(settings.database.url).entries()}
    assert entries["germany"].history == spent  # untouched
    assert entries["france"].rounds == 2 and entries["france"].epsilon <= 20.0


def _open_and_read(url: str, store: str) -> None:
    for _ in range(5):
        BudgetLedger(url).load(store)


def test_when_several_processes_open_the_ledger_at_once_then_none_fails(tmp_path: Path) -> None:
    """Regression: store clients creating the ledger tables concurrently hit 'database is locked'."""
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'race.db'}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open_and_read, args=(url, f"s{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]


def test_when_every_store_is_at_its_cap_then_the_run_says_so(tiny_settings: Settings) -> None:
    from siloguard.federation.runner import prepare_run, run_federation

    settings = tiny_settings.with_overrides(
        privacy={"enabled": True, "sample_rate": 0.25, "noise_multiplier": 1.0, "epsilon_cap": 0.01},
        federation={"rounds": 1},
    )
    prepared = prepare_run(settings)
    with pytest.raises(PrivacyBudgetError, match="every store is at its privacy budget"):
        run_federation(settings, prepared)


def test_when_two_rounds_of_one_store_train_from_the_same_ledger_state_then_only_the_first_is_recorded(
    ledger_url: str,
) -> None:
    """Two train messages at once (or a replay): the second would overwrite the first's spend."""
    store = f"store-{uuid.uuid4().hex[:8]}"
    ledger = BudgetLedger(ledger_url)
    _record(ledger, store, [(1.0, 0.1, 20)], 1)
    read = ledger.load(store).history  # both rounds plan from here
    _record(ledger, store, [*read, (1.2, 0.1, 20)], 2)
    with pytest.raises(PrivacyBudgetError, match="changed while this round trained"):
        _record(ledger, store, [*read, (1.2, 0.1, 20)], 2)
    merged = [(1.0, 0.1, 40)]  # the same noise again: the accountant merges the entries
    other = f"store-{uuid.uuid4().hex[:8]}"
    _record(ledger, other, [(1.0, 0.1, 20)], 1)
    _record(ledger, other, merged, 2)
    with pytest.raises(PrivacyBudgetError, match="changed"):
        _record(ledger, other, merged, 2)
    entry = ledger.load(store)
    assert entry is not None and entry.rounds == 2 and entry.history == [(1.0, 0.1, 20), (1.2, 0.1, 20)]


def test_when_a_round_planned_from_a_ledger_state_that_moved_on_then_the_compare_and_swap_refuses_it(
    ledger_url: str,
) -> None:
    store = f"store-{uuid.uuid4().hex[:8]}"
    ledger = BudgetLedger(ledger_url)
    history = [(1.0, 0.1, 20)]

    def record(h, expected):  # noqa: ANN001, ANN202
        return ledger.record_round(store=store, accountant="rdp", history=h, delta=1e-5,
                                   epsilon=epsilon_of("rdp", h, 1e-5), epsilon_cap=8.0, server_round=1,
                                   expected_rounds=expected)

    record(history, 0)
    record([(1.0, 0.1, 25)], 1)  # a merged entry that grew: fine when planned from round 1
    with pytest.raises(PrivacyBudgetError, match="changed"):
        record([(1.0, 0.1, 30)], 1)  # planned from round 1 too, but round 2 is recorded: refused
    record([(1.0, 0.1, 25)], 2)  # a round that trained nobody (same history) is still a round
    assert ledger.load(store).rounds == 3
