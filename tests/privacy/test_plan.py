"""The planned budget: each round's noise is chosen so the planned run spends the target."""

from __future__ import annotations

import logging

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from siloguard.config import PrivacySettings, Settings
from siloguard.errors import ConfigError
from siloguard.privacy.dp import (
    effective_sample_rate,
    epsilon_of,
    plan_noise,
    projected_epsilon,
    rounds_left,
    steps_per_round,
)

DELTA = 1e-5
EPOCHS = 2


def _run(privacy: PrivacySettings, rounds: int, customers_by_round: dict[int, int], history=None):
    """Rounds as a store plays them: plan, check the projection, train (append to the ledger)."""
    history = list(history or [])
    spent = []
    for server_round, customers in sorted(customers_by_round.items()):
        noise = plan_noise(privacy, history, rounds=rounds_left(rounds, server_round), local_epochs=EPOCHS,
                           delta=DELTA, customers=customers)
        assert noise is not None, f"round {server_round} found no noise: the store would be skipped"
        projected = projected_epsilon(privacy, history, EPOCHS, DELTA, customers, noise)
        assert projected <= privacy.epsilon_cap, f"round {server_round} would be skipped (projected {projected})"
        history.append(
            (noise, effective_sample_rate(privacy, customers), steps_per_round(privacy, EPOCHS, customers))
        )
        eps = epsilon_of(privacy.accountant, history, DELTA)
        assert eps == pytest.approx(projected, rel=1e-12)  # what the coordinator was told is what was spent
        spent.append(eps)
    return history, spent


def _rdp_epsilon_by_dp_accounting(history) -> float:
    accountant = rdp.RdpAccountant()
    for noise, rate, steps in history:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps))
    return accountant.get_epsilon(DELTA)


def test_when_seven_rounds_are_planned_then_the_run_ends_within_2_percent_under_the_target() -> None:
    privacy = PrivacySettings(epsilon=8.0)
    history, spent = _run(privacy, 7, {r: 265 for r in range(1, 8)})
    assert all(b > a for a, b in zip(spent, spent[1:]))  # every round trained and spent some
    assert max(spent) <= 8.0
    assert spent[-1] >= 0.98 * 8.0
    assert spent[0] < 0.6 * 8.0  # round 1 no longer spends most of the budget
    assert _rdp_epsilon_by_dp_accounting(history) == pytest.approx(spent[-1], rel=0.02)


def test_when_no_epsilon_is_set_then_the_plan_spends_the_cap() -> None:
    _history, spent = _run(PrivacySettings(epsilon_cap=3.0), 4, {r: 120 for r in range(1, 5)})
    assert 0.98 * 3.0 <= spent[-1] <= 3.0


def test_when_a_store_joins_at_round_3_of_7_then_it_still_ends_at_the_target() -> None:
    privacy = PrivacySettings(epsilon=4.0)
    _full, on_time = _run(privacy, 7, {r: 265 for r in range(1, 8)})
    history, late = _run(privacy, 7, {r: 265 for r in range(3, 8)})
    assert len(history) == 5
    assert 0.98 * 4.0 <= late[-1] <= 4.0
    assert history[0][0] < _full[0][0]  # fewer rounds left: less noise per round
    assert _rdp_epsilon_by_dp_accounting(history) == pytest.approx(late[-1], rel=0.02)


def test_when_a_store_is_skipped_and_its_customers_change_then_it_still_ends_at_the_target() -> None:
    privacy = PrivacySettings(epsilon=6.0)
    # Round 4 skipped (dropped out), customers grow then shrink (erasures, new consents).
    history, spent = _run(privacy, 7, {1: 200, 2: 230, 3: 260, 5: 300, 6: 180, 7: 150})
    assert 0.98 * 6.0 <= spent[-1] <= 6.0
    assert len({round(n, 6) for n, _q, _s in history}) > 1  # the noise was re-planned


def test_when_the_prv_accountant_plans_then_dp_accounting_pld_agrees() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    privacy = PrivacySettings(epsilon=5.0, accountant="prv")
    history, spent = _run(privacy, 2, {1: 100, 2: 100})
    assert 0.98 * 5.0 <= spent[-1] <= 5.0
    theirs = pld.PLDAccountant()
    for noise, rate, steps in history:
        theirs.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps))
    assert theirs.get_epsilon(DELTA) == pytest.approx(spent[-1], rel=0.02)


def test_when_the_store_has_spent_its_target_then_no_noise_is_planned() -> None:
    privacy = PrivacySettings(epsilon=2.0)
    over = [(0.8, 0.1, 400)]  # an earlier run on the same ledger spent more than the target
    assert epsilon_of("rdp", over, DELTA) > 2.0
    assert plan_noise(privacy, over, rounds=3, local_epochs=EPOCHS, delta=DELTA, customers=100) is None


def test_when_the_noise_is_fixed_then_it_is_not_planned() -> None:
    privacy = PrivacySettings(noise_multiplier=1.3)
    assert plan_noise(privacy, [(1.0, 0.1, 20)], rounds=5, local_epochs=EPOCHS, delta=DELTA, customers=100) == 1.3


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"epsilon": 9.0, "epsilon_cap": 8.0}, "above epsilon_cap"),
        ({"epsilon": 3.0, "noise_multiplier": 1.0}, "either epsilon"),
        ({"epsilon": 0}, "epsilon"),
    ],
)
def test_when_the_plan_is_contradictory_then_settings_refuse_it(privacy, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.build(privacy=privacy)


def test_rounds_left_counts_this_round() -> None:
    assert rounds_left(7, 1) == 7
    assert rounds_left(7, 3) == 5
    assert rounds_left(7, 7) == 1
    assert rounds_left(7, 9) == 1  # an extra round beyond the plan: plan it as the last
    assert rounds_left(7, None) == 7  # unknown round: plan for all (more noise, never over)
    assert rounds_left(1, 0) == 1


def test_when_item_biases_would_be_trained_on_the_fast_path_then_the_settings_are_refused() -> None:
    # The text map's one-pass DP path takes per-customer gradients of the text map only.
    with pytest.raises(ValueError, match="train_item_biases needs local_repeat off"):
        PrivacySettings(train_item_biases=True)
    assert PrivacySettings(train_item_biases=True, local_repeat=False).train_item_biases
