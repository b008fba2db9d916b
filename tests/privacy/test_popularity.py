"""The DP release of a store's item popularity: bounded contribution, Gaussian noise, accounted."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp
from dp_accounting import pld, rdp

from siloguard.config import PrivacySettings
from siloguard.privacy.budget import BudgetLedger
from siloguard.privacy.dp import effective_sample_rate, epsilon_of, plan_noise, rounds_left, steps_per_round
from siloguard.privacy.popularity import (
    bounded_popularity,
    is_release_step,
    popularity_prior,
    release_noise,
    release_popularity,
    release_step,
)

DELTA = 1e-5
EPOCHS = 2


def _counts(rows: list[dict[int, int]], n_items: int) -> sp.csr_matrix:
    data, indices, indptr = [], [], [0]
    for row in rows:
        for item, baskets in sorted(row.items()):
            indices.append(item)
            data.append(baskets)
        indptr.append(len(indices))
    return sp.csr_matrix((np.asarray(data, float), indices, indptr), shape=(len(rows), n_items))


@pytest.mark.parametrize("extra", [
    {i: 40 for i in range(500)},  # a wholesale customer: 500 items, many baskets each
    {3: 1},  # one item once
    {i: 1 + i % 7 for i in range(0, 500, 3)},
])
def test_adding_or_removing_one_customer_moves_the_unnoised_release_by_at_most_1(extra: dict[int, int]) -> None:
    rng = np.random.default_rng(0)
    others = [{int(i): int(rng.integers(1, 20)) for i in rng.choice(500, size=rng.integers(1, 60), replace=False)}
              for _ in range(200)]
    without = bounded_popularity(_counts(others, 500))
    with_one = bounded_popularity(_counts([*others[:57], extra, *others[57:]], 500))
    moved = float(np.linalg.norm(with_one - without))
    assert moved <= 1.0 + 1e-12
    assert moved == pytest.approx(1.0)  # the whole unit norm is used: none of the budget is wasted
    # Raw customer counts would move by sqrt(items bought): 22 for the wholesale customer.
    raw = float(np.linalg.norm((_counts([extra], 500) > 0).toarray().sum(0)))
    assert raw == pytest.approx(np.sqrt(len(extra)))


def test_a_release_is_noised_and_never_the_same_twice() -> None:
    counts = _counts([{0: 3, 1: 1}, {0: 1}, {2: 5}], 4)
    exact = bounded_popularity(counts)
    first, second = release_popularity(counts, 2.0), release_popularity(counts, 2.0)
    assert not np.allclose(first, exact) and not np.allclose(first, second)
    big = release_popularity(_counts([{}] * 3, 20000), 2.0)
    assert np.std(big) == pytest.approx(2.0, rel=0.05)  # N(0, sigma^2) per item
    with pytest.raises(ValueError):
        release_popularity(counts, 0.0)


def test_the_prior_keeps_what_stands_above_the_noise() -> None:
    prior = popularity_prior(np.array([-5.0, 1.0, 4.5, 30.0]), noise=2.0)
    assert prior.tolist() == [0.0, 0.0, 0.5, 26.0]


def _dp_accounting_rdp(history) -> float:
    """dp-accounting's RDP epsilon: the release as a plain Gaussian mechanism, the rounds as
    Poisson-sampled Gaussians (an independent implementation of both)."""
    accountant = rdp.RdpAccountant()
    for noise, rate, steps in history:
        if is_release_step((noise, rate, steps)):
            accountant.compose(dp_accounting.GaussianDpEvent(noise))
        else:
            accountant.compose(dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps))
    return accountant.get_epsilon(DELTA)


def _planned_run(privacy: PrivacySettings, customers: int, rounds: int = 7) -> list[tuple[float, float, int]]:
    """As a store plays it: the release first, then every round planned on what is left."""
    history = [release_step(release_noise(privacy, DELTA))]
    for server_round in range(1, rounds + 1):
        noise = plan_noise(privacy, history, rounds=rounds_left(rounds, server_round), local_epochs=EPOCHS,
                           delta=DELTA, customers=customers)
        assert noise is not None
        history.append((noise, effective_sample_rate(privacy, customers), steps_per_round(privacy, EPOCHS, customers)))
    return history


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_a_planned_run_with_the_release_ends_within_2_percent_under_the_target(target: float) -> None:
    privacy = PrivacySettings(epsilon=target, epsilon_cap=8.0)
    history = _planned_run(privacy, 265)
    spent = epsilon_of("rdp", history, DELTA)
    assert 0.98 * target <= spent <= target
    # The release is paid for: the rounds after it train with more noise than without it.
    without = plan_noise(privacy, [], rounds=7, local_epochs=EPOCHS, delta=DELTA, customers=265)
    assert history[1][0] > without
    assert _dp_accounting_rdp(history) == pytest.approx(spent, rel=0.02)


def test_the_ledger_records_the_release_and_its_epsilon_agrees_with_dp_accounting(tmp_path: Path) -> None:
    privacy = PrivacySettings(epsilon=8.0)
    history = _planned_run(privacy, 900)
    ledger = BudgetLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.record_round(store="germany", accountant="rdp", history=history, delta=DELTA,
                        epsilon=epsilon_of("rdp", history, DELTA), epsilon_cap=8.0, server_round=1)
    entry = BudgetLedger(f"sqlite:///{tmp_path / 'ledger.db'}").load("germany")
    assert entry is not None
    assert entry.history[0] == release_step(release_noise(privacy, DELTA))
    assert is_release_step(entry.history[0]) and not any(is_release_step(h) for h in entry.history[1:])
    assert entry.epsilon == pytest.approx(_dp_accounting_rdp(entry.history), rel=0.02)
    # Without the release the same rounds spend less: the ledger's epsilon includes it.
    assert epsilon_of("rdp", entry.history[1:], DELTA) < entry.epsilon


def test_the_release_alone_is_the_gaussian_mechanism_in_both_accountants() -> None:
    sigma = release_noise(PrivacySettings(epsilon=8.0), DELTA)
    step = [release_step(sigma)]
    mine_rdp, mine_prv = epsilon_of("rdp", step, DELTA), epsilon_of("prv", step, DELTA)
    theirs_rdp = rdp.RdpAccountant()
    theirs_rdp.compose(dp_accounting.GaussianDpEvent(sigma))
    theirs_pld = pld.PLDAccountant()
    theirs_pld.compose(dp_accounting.GaussianDpEvent(sigma))
    assert mine_rdp == pytest.approx(theirs_rdp.get_epsilon(DELTA), rel=0.02)
    assert mine_prv == pytest.approx(theirs_pld.get_epsilon(DELTA), rel=0.02)


def test_the_release_noise_takes_its_share_of_the_target() -> None:
    sigmas = {t: release_noise(PrivacySettings(epsilon=t, epsilon_cap=8.0), DELTA) for t in (1.0, 3.0, 8.0)}
    assert sigmas[1.0] > sigmas[3.0] > sigmas[8.0] > 1.0  # a smaller budget, more noise
    assert release_noise(PrivacySettings(epsilon=8.0, popularity_share=0.0), DELTA) is None
    less = release_noise(PrivacySettings(epsilon=8.0, popularity_share=0.1), DELTA)
    more = release_noise(PrivacySettings(epsilon=8.0, popularity_share=0.4), DELTA)
    assert more == pytest.approx(less / 2)  # four times the share of rho: half the noise
