"""BG/NBD and Gamma-Gamma: the fits recover the parameters of data simulated from the models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from siloguard.errors import DataError
from siloguard.marketing.clv import BetaGeo, GammaGamma, fit_clv, naive_forecast, rfm_summary


def _simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n)
    T = rng.uniform(100, 365, n)
    x, tx = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T[i]:
                break
            x[i] += 1
            tx[i] = t
            if rng.random() < p[i]:
                break
    return pd.DataFrame({"frequency": x, "recency": tx, "T": T})


def test_when_data_follow_bg_nbd_then_the_fit_recovers_its_parameters() -> None:
    summary = _simulate_bgnbd(5000, r=0.5, alpha=20.0, a=0.8, b=2.5)
    fit = BetaGeo.fit(summary)
    assert fit.r == pytest.approx(0.5, rel=0.15)
    assert fit.alpha == pytest.approx(20.0, rel=0.2)
    assert fit.a == pytest.approx(0.8, rel=0.3)
    assert fit.b == pytest.approx(2.5, rel=0.4)
    x, tx, T = (summary[c].to_numpy() for c in ("frequency", "recency", "T"))
    alive = fit.p_alive(x, tx, T)
    assert ((alive > 0) & (alive <= 1)).all()
    assert (alive[x == 0] == 1).all()  # never bought again: cannot have dropped out
    more = fit.expected_purchases(60, x, tx, T)
    less = fit.expected_purchases(30, x, tx, T)
    assert (more >= less).all() and (less > 0).all()  # a < 1 here: the closed form's two negative factors
    chance = fit.p_any(30, summary)
    assert ((chance >= 0) & (chance <= 1)).all()


def test_when_spend_follows_gamma_gamma_then_the_fit_recovers_the_mean_spend() -> None:
    rng = np.random.default_rng(2)
    n, p, q, v = 4000, 6.0, 4.0, 15.0
    nu = rng.gamma(q, 1 / v, n)
    x = rng.integers(1, 8, n).astype(float)
    m = np.array([rng.gamma(p, 1 / nu[i], int(x[i])).mean() for i in range(n)])
    fit = GammaGamma.fit(pd.DataFrame({"frequency": x, "monetary": m}))
    assert fit.p * fit.v / (fit.q - 1) == pytest.approx(p * v / (q - 1), rel=0.1)
    expected = fit.expected_spend(x, m)
    # shrinks each customer's average towards the population's
    assert np.corrcoef(expected, m)[0, 1] > 0.9


def test_when_transactions_are_summarised_then_same_day_purchases_are_one() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b"],
            "invoice_date": pd.to_datetime(["2011-01-01 10:00", "2011-01-01 15:00", "2011-01-11 09:00", "2011-01-05 09:00"]),
            "quantity": [1, 2, 1, 1],
            "unit_price": [10.0, 5.0, 30.0, 7.0],
        }
    )
    summary = rfm_summary(frame, pd.Timestamp("2011-01-21"))
    assert summary.loc["a"].tolist() == [1.0, 10.0, 20.0, 30.0]
    assert summary.loc["b"].tolist() == [0.0, 0.0, 16.0, 0.0]
    naive = naive_forecast(summary, 20, frame, pd.Timestamp("2011-01-21"))
    assert naive.loc["a", "purchases"] == pytest.approx(2 / 20 * 20)
    with pytest.raises(DataError, match="at least 10 customers"):
        fit_clv(frame, pd.Timestamp("2011-01-21"))
