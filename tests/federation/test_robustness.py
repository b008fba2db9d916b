"""Robust rounds: poisoned updates rejected, drops reported, robust aggregates, audited rounds.

Real Flower strategies and Messages; the only fake is the Grid (a list of node ids), since
these tests drive the strategy's configure/aggregate steps directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from siloguard.audit.vocabulary import FEDERATION_ROUND, STORE_DROPPED, UPDATE_ACCEPTED, UPDATE_REJECTED
from siloguard.federation.app import round_events
from siloguard.federation.registry import sha256_from_counts
from siloguard.federation.strategy import OUTLIER, NON_FINITE, OVER_NORM, SiloFedAvg, arrays_sha256, screen_update
from tests.federation.fake_grid import FakeGrid, fake_task_identity  # noqa: F401  (an autouse fixture)

STORES = {1: "france", 2: "germany", 3: "united-kingdom"}
RNG = np.random.default_rng(7)
GLOBAL = [RNG.normal(size=(6, 4)).astype(np.float32), RNG.normal(size=(4,)).astype(np.float32)]
DELTAS = {node: [0.01 * RNG.normal(size=g.shape).astype(np.float32) for g in GLOBAL] for node in STORES}


def _strategy(**kwargs) -> SiloFedAvg:
    return SiloFedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2, **kwargs)


def _sent(strategy: SiloFedAvg, server_round: int = 1, nodes=(1, 2, 3)) -> dict[int, Message]:
    messages = strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid(list(nodes)))
    return {m.metadata.dst_node_id: m for m in messages}


def _reply(msg: Message, arrays: list[np.ndarray], examples: int = 10) -> Message:
    store = STORES[msg.metadata.dst_node_id]
    content = RecordDict(
        {
            "arrays": ArrayRecord(arrays),
            "metrics": MetricRecord({"num-examples": examples, "train-loss": 0.5}),
            "store": ConfigRecord({"name": store}),
        }
    )
    return Message(content=content, reply_to=msg)


def _honest(node: int) -> list[np.ndarray]:
    return [g + d for g, d in zip(GLOBAL, DELTAS[node])]


def _aggregate(strategy: SiloFedAvg, replies: dict[int, list[np.ndarray]], server_round: int = 1):
    sent = _sent(strategy, server_round)
    arrays, _ = strategy.aggregate_train(
        server_round, [_reply(sent[node], a, examples=10 * node) for node, a in replies.items()]
    )
    return arrays, strategy.reports[server_round]


def _honest_only() -> list[np.ndarray]:
    arrays, _ = _aggregate(_strategy(), {1: _honest(1), 2: _honest(2)})
    return arrays.to_numpy_ndarrays()


def test_when_a_store_sends_nan_then_its_update_is_rejected_and_the_model_is_what_the_others_make():
    poisoned = _honest(3)
    poisoned[0][2, 1] = np.nan
    arrays, report = _aggregate(_strategy(), {1: _honest(1), 2: _honest(2), 3: poisoned})
    assert report.rejected == {"united-kingdom": NON_FINITE}
    assert report.participants == ["france", "germany"]
    for got, want in zip(arrays.to_numpy_ndarrays(), _honest_only()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_when_a_store_sends_inf_then_it_is_rejected(value):
    poisoned = _honest(3)
    poisoned[1][0] = value
    _, report = _aggregate(_strategy(), {1: _honest(1), 2: _honest(2), 3: poisoned})
    assert report.rejected == {"united-kingdom": NON_FINITE}


def test_when_a_store_sends_a_1000x_update_then_it_is_rejected_and_the_model_is_unchanged_by_it():
    boosted = [g + 1000 * d for g, d in zip(GLOBAL, DELTAS[3])]
    arrays, report = _aggregate(_strategy(), {1: _honest(1), 2: _honest(2), 3: boosted})
    assert report.rejected == {"united-kingdom": OUTLIER}
    assert report.update_norms["united-kingdom"] > 100 * report.update_norms["france"]
    for got, want in zip(arrays.to_numpy_ndarrays(), _honest_only()):
        np.testing.assert_array_equal(got, want)
    # Without the screen the same update would have moved the model by far more:
    unscreened, _ = _aggregate(_strategy(outlier_factor=None), {1: _honest(1), 2: _honest(2), 3: boosted})
    moved = max(float(np.abs(a - b).max()) for a, b in zip(unscreened.to_numpy_ndarrays(), _honest_only()))
    assert moved > 1.0


def test_when_an_honest_store_moves_the_model_20x_more_than_the_others_then_it_is_kept():
    # A small store's DP-noised update is larger than a big store's: that is not poisoning.
    louder = [g + 20 * d for g, d in zip(GLOBAL, DELTAS[3])]
    _, report = _aggregate(_strategy(), {1: _honest(1), 2: _honest(2), 3: louder})
    assert report.rejected == {}
    assert report.participants == sorted(STORES.values())


def test_when_an_update_is_above_the_absolute_bound_then_it_is_rejected_even_between_two_stores():
    boosted = [g + 1000 * d for g, d in zip(GLOBAL, DELTAS[2])]
    arrays, report = _aggregate(_strategy(max_update_norm=1.0), {1: _honest(1), 2: boosted})
    assert report.rejected == {"germany": OVER_NORM}
    for got, want in zip(arrays.to_numpy_ndarrays(), _honest(1)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_when_every_update_is_rejected_then_there_is_no_aggregate_and_the_global_model_stays():
    bad = [np.full_like(g, np.nan) for g in GLOBAL]
    arrays, metrics = _strategy().aggregate_train(1, [])
    assert (arrays, metrics) == (None, None)
    arrays, report = _aggregate(_strategy(), {1: bad, 2: bad})
    assert arrays is None and set(report.rejected) == {"france", "germany"}


def test_when_an_update_has_the_wrong_shape_then_it_is_rejected():
    reason, _ = screen_update([np.zeros((6, 5)), np.zeros(4)], GLOBAL, None)
    assert reason == "update-shape-mismatch"


def test_when_the_aggregator_is_median_then_flowers_fedmedian_combines_the_updates():
    replies = {n: _honest(n) for n in STORES}
    arrays, report = _aggregate(_strategy(aggregator="median"), replies)
    want = [np.median(np.stack([replies[n][i] for n in STORES]), axis=0) for i in range(len(GLOBAL))]
    for got, w in zip(arrays.to_numpy_ndarrays(), want):
        np.testing.assert_allclose(got, w, rtol=1e-6)
    assert report.participants == sorted(STORES.values())


def test_when_the_aggregator_is_trimmed_mean_then_one_outlier_per_tail_is_cut():
    strategy = _strategy(aggregator="trimmed-mean", trim_fraction=0.34, outlier_factor=None)
    replies = {n: _honest(n) for n in STORES}
    arrays, _ = _aggregate(strategy, replies)
    want = [np.median(np.stack([replies[n][i] for n in STORES]), axis=0) for i in range(len(GLOBAL))]  # 3 values, 1 cut each side
    for got, w in zip(arrays.to_numpy_ndarrays(), want):
        np.testing.assert_allclose(got, w, rtol=1e-6)


def test_when_a_store_sends_nothing_back_then_the_round_goes_on_and_reports_it_dropped():
    strategy = _strategy()
    _aggregate(strategy, {n: _honest(n) for n in STORES}, server_round=1)  # every store names itself
    arrays, report = _aggregate(strategy, {1: _honest(1), 3: _honest(3)}, server_round=2)
    assert arrays is not None
    assert report.dropped == ["germany"]
    assert report.participants == ["france", "united-kingdom"]


def test_a_rounds_audit_names_participants_rejections_drops_and_the_model_checksum():
    strategy = _strategy()
    _aggregate(strategy, {n: _honest(n) for n in STORES}, server_round=1)
    poisoned = _honest(3)
    poisoned[0][0, 0] = np.nan
    arrays, report = _aggregate(strategy, {1: _honest(1), 3: poisoned}, server_round=2)
    strategy.configure_evaluate(2, arrays, ConfigRecord(), FakeGrid([1, 3]))
    events = round_events(report)
    by_action = {}
    for e in events:
        by_action.setdefault(e.action, []).append(e)
    (summary,) = by_action[FEDERATION_ROUND]
    assert summary.counts["stores_dropped"] == 1 and summary.counts["updates_rejected"] == 1
    assert summary.counts["updates_accepted"] == 1
    assert sha256_from_counts(dict(summary.counts)) == arrays_sha256(arrays) == report.model_sha256
    assert [e.store for e in by_action[UPDATE_ACCEPTED]] == ["france"]
    assert [(e.store, e.reason, e.decision) for e in by_action[UPDATE_REJECTED]] == [("united-kingdom", NON_FINITE, "deny")]
    assert [e.store for e in by_action[STORE_DROPPED]] == ["germany"]


def test_the_model_checksum_changes_with_any_value():
    other = [g.copy() for g in GLOBAL]
    other[1][3] = np.nextafter(other[1][3], np.float32(10))
    assert arrays_sha256(ArrayRecord(GLOBAL)) != arrays_sha256(ArrayRecord(other))
    assert arrays_sha256(ArrayRecord(GLOBAL)) == arrays_sha256(ArrayRecord([g.copy() for g in GLOBAL]))


def _evaluate_round(strategy: SiloFedAvg, server_round: int, arrays: list[np.ndarray], val: float) -> None:
    """One evaluation phase: every store reports test and validation metrics of ``arrays``."""
    sent = strategy.configure_evaluate(server_round, ArrayRecord(arrays), ConfigRecord(), FakeGrid([1, 2, 3]))
    replies = []
    for msg in sent:
        node = msg.metadata.dst_node_id
        metrics = {"num-examples": 5, "users": 5, "ndcg@10": 0.9, "new.users": 5, "new.ndcg@10": 0.9,
                   "val.users": 10 * node, "val.ndcg@10": val + 0.01 * node}
        content = RecordDict({"metrics": MetricRecord(metrics), "store": ConfigRecord({"name": STORES[node]})})
        replies.append(Message(content=content, reply_to=msg))
    strategy.aggregate_evaluate(server_round, replies)


def test_when_keeping_the_best_round_then_the_round_best_on_validation_is_kept_not_the_last():
    strategy = _strategy(keep_best=True)
    models = {r: [g + r for g in GLOBAL] for r in (1, 2, 3)}
    for server_round, val in ((1, 0.30), (2, 0.35), (3, 0.33)):  # declines after round 2
        _evaluate_round(strategy, server_round, models[server_round], val)
    assert strategy.best_round == 2
    assert all(np.array_equal(a, b) for a, b in zip(strategy.best_arrays.to_numpy_ndarrays(), models[2]))
    # validation is weighted by each store's validation customers, like the test metrics
    assert strategy.reports[2].overall["val.ndcg@10"] == pytest.approx(0.35 + 0.01 * (10 + 40 + 90) / 60)
    plain = _strategy()  # without keep_best nothing is held back
    _evaluate_round(plain, 1, models[1], 0.3)
    assert plain.best_round is None and plain.best_arrays is None
