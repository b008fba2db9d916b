"""The coordinator's side of the DP popularity prior: it sums the stores' releases and sends the sum.

Real Flower strategy and Messages; the Grid is a list of node ids (as in test_robustness.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from siloguard.federation.strategy import SiloFedAvg
from siloguard.privacy.popularity import popularity_record, read_popularity_record
from tests.federation.fake_grid import FakeGrid, fake_task_identity  # noqa: F401  (an autouse fixture)

STORES = {1: "france", 2: "germany", 3: "united-kingdom"}
GLOBAL = [np.zeros((6, 4), np.float32), np.zeros((4,), np.float32)]
ITEMS = 5


def _strategy() -> SiloFedAvg:
    return SiloFedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)


def _train(strategy: SiloFedAvg, server_round: int, releases: dict[int, tuple[np.ndarray, float]], nodes=(1, 2, 3)):
    """One training round: every node replies, those in ``releases`` with their popularity release."""
    sent = strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid(list(nodes)))
    replies = []
    for msg in sent:
        node = msg.metadata.dst_node_id
        content = RecordDict({
            "arrays": ArrayRecord([g + 0.01 for g in GLOBAL]),
            "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5}),
            "store": ConfigRecord({"name": STORES[node]}),
        })
        if node in releases:
            content["popularity"] = popularity_record(*releases[node])
        replies.append(Message(content=content, reply_to=msg))
    strategy.aggregate_train(server_round, replies)
    return sent


def test_the_coordinator_sends_the_sum_of_the_releases_it_has_with_later_messages() -> None:
    strategy = _strategy()
    france, germany = (np.arange(ITEMS, dtype=float), 2.0), (np.full(ITEMS, 10.0), 3.0)
    first = _train(strategy, 1, {1: france, 2: germany})
    assert all("popularity" not in m.content for m in first)  # nothing released before round 1
    assert strategy.reports[1].released_popularity == {"france": 2.0, "germany": 3.0}

    evaluate = strategy.configure_evaluate(1, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))
    second = _train(strategy, 2, {3: (np.ones(ITEMS), 4.0)})  # a store that releases late
    for msg in [*evaluate, *second]:
        released, sigma = read_popularity_record(msg.content["popularity"], ITEMS)
        assert np.allclose(released, france[0] + germany[0])
        assert sigma == pytest.approx(np.sqrt(2.0**2 + 3.0**2))  # independent noises add in variance
    third = strategy.configure_train(3, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))
    released, sigma = read_popularity_record(third[0].content["popularity"], ITEMS)
    assert np.allclose(released, france[0] + germany[0] + 1.0) and sigma == pytest.approx(np.sqrt(29.0))


def test_a_release_that_is_not_one_or_comes_with_a_rejected_update_is_not_summed() -> None:
    strategy = SiloFedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2, max_update_norm=1.0)
    sent = strategy.configure_train(1, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))
    replies = []
    for msg in sent:
        node = msg.metadata.dst_node_id
        arrays = [g + (100.0 if node == 3 else 0.01) for g in GLOBAL]  # store 3's update is rejected
        content = RecordDict({
            "arrays": ArrayRecord(arrays),
            "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5}),
            "store": ConfigRecord({"name": STORES[node]}),
        })
        bad = np.full(ITEMS, np.nan) if node == 2 else np.ones(ITEMS)
        content["popularity"] = popularity_record(bad, 2.0)
        replies.append(Message(content=content, reply_to=msg))
    strategy.aggregate_train(1, replies)
    assert sorted(strategy.popularity) == ["france"]
    assert strategy.reports[1].rejected_popularity == ["germany"]


def test_a_release_that_would_break_everyones_prior_is_refused_not_summed() -> None:
    strategy = _strategy()
    honest = (np.arange(ITEMS, dtype=float), 2.0)
    huge = (np.full(ITEMS, 1e300), 2.0)  # two of these sum to inf
    loud = (np.zeros(ITEMS), 1e200)  # the sum's noise would be meaningless
    _train(strategy, 1, {1: honest, 2: huge, 3: loud})
    report = strategy.reports[1]
    assert sorted(report.rejected_popularity) == ["germany", "united-kingdom"]
    sent = _train(strategy, 2, {})
    released, sigma = read_popularity_record(sent[0].content["popularity"])
    assert np.array_equal(released, honest[0]) and sigma == 2.0


def test_a_store_whose_first_update_was_screened_out_is_summed_from_its_next_and_a_resend_is_not_new() -> None:
    strategy = SiloFedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2, max_update_norm=1.0)
    release = (np.ones(ITEMS), 2.0)

    def round_(server_round: int, rejected: set[int]) -> None:
        sent = strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid([1, 2, 3]))
        replies = []
        for msg in sent:
            node = msg.metadata.dst_node_id
            content = RecordDict({
                "arrays": ArrayRecord([g + (100.0 if node in rejected else 0.01) for g in GLOBAL]),
                "metrics": MetricRecord({"num-examples": 10}),
                "store": ConfigRecord({"name": STORES[node]}),
                "popularity": popularity_record(*release),  # each store sends its one release every round
            })
            replies.append(Message(content=content, reply_to=msg))
        strategy.aggregate_train(server_round, replies)

    round_(1, rejected={3})
    assert sorted(strategy.popularity) == ["france", "germany"]
    round_(2, rejected=set())
    assert sorted(strategy.popularity) == ["france", "germany", "united-kingdom"]
    assert strategy.reports[2].released_popularity == {"united-kingdom": 2.0}  # only what is new


def test_a_node_that_names_another_store_does_not_replace_that_stores_release() -> None:
    strategy = _strategy()
    _train(strategy, 1, {1: (np.ones(ITEMS), 2.0)})
    STORES[3] = "france"  # node 3 claims to be france
    try:
        _train(strategy, 2, {3: (np.full(ITEMS, 1e6), 2.0)})
    finally:
        STORES[3] = "united-kingdom"
    released, _ = strategy.popularity["france"]
    assert np.array_equal(released, np.ones(ITEMS))
    assert strategy.reports[2].rejected_popularity == ["france"]
