"""Customer lifetime value: BG/NBD for how often a customer buys, Gamma-Gamma for how much.

**Models.** BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while
alive a customer buys at a Poisson rate drawn from Gamma(r, alpha); after each purchase they
drop out with a probability drawn from Beta(a, b). Gamma-Gamma (Fader, Hardie & Lee 2005,
"RFM and CLV"): a customer's spend per purchase averages a value drawn from Gamma(q, v)
with Gamma(p, .) noise, independent of how often they buy. Both are fitted by maximum
likelihood on the standard summary per customer: ``frequency`` (repeat purchase days),
``recency`` (days from first to last purchase day), ``T`` (days from first purchase to the
end of the calibration period) and ``monetary`` (mean spend of the repeat purchase days).

**Why the likelihoods are written here with scipy, not taken from a library** (checked
2026-12, see docs/BENCHMARKS.md "Customer lifetime value"):

* ``lifetimes`` (0.11.3, last release 2020-07) is unmaintained: with this project's pandas 3
  and numpy 2 it needs ``dill`` and setuptools' removed ``pkg_resources`` (its datasets), and
  its BG/NBD fit stopped with ``ConvergenceError`` on a plain Poisson test set that the fit
  below handles; on data simulated from BG/NBD both give the same parameters to 4 digits;
* ``btyd`` (0.1b3, 2022-11) is a beta fork of lifetimes that was not released again;
* ``pymc-marketing`` is maintained, but the newest release that resolves with this
  project's pins (0.19.2) brings 25 packages into every store site (PyMC, PyTensor and its C
  compiler step, numba/llvmlite, arviz, xarray, h5py, ...) to fit two closed-form
  likelihoods, and compiling its graphs on a 2-core store machine takes longer than the
  whole fit below (well under a second for 4,000 customers).

The closed forms are short and standard; they are implemented from the papers above with
``scipy.special`` (log-gamma, log-beta, Gauss hypergeometric function) and fitted with
``scipy.optimize.minimize`` (L-BFGS-B on log-parameters). The tests check the fit recovers
the parameters of data simulated from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special

from siloguard.errors import DataError

__all__ = ["BetaGeo", "CLVModel", "GammaGamma", "fit_clv", "naive_forecast", "rfm_summary"]


def rfm_summary(frame: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """Per customer: ``frequency``, ``recency``, ``T`` (days) and ``monetary`` before ``end``.

    ``frame``: ``customer_id``, ``invoice_date``, ``quantity``, ``unit_price``. Purchases on one
    day count as one purchase (the usual convention), spend summed over the day.
    """
    past = frame[frame["invoice_date"] < end]
    if past.empty:
        return pd.DataFrame(columns=["frequency", "recency", "T", "monetary"], index=pd.Index([], name="customer_id"))
    spend = past["quantity"].astype(float) * past["unit_price"].astype(float)
    days = past.assign(day=past["invoice_date"].dt.normalize(), spend=spend).groupby(["customer_id", "day"])["spend"].sum()
    days = days.reset_index()
    grouped = days.groupby("customer_id")
    first = grouped["day"].min()
    last = grouped["day"].max()
    count = grouped["day"].size()
    total = grouped["spend"].sum()
    first_spend = days.sort_values("day").groupby("customer_id")["spend"].first()
    frequency = (count - 1).astype(float)
    repeat_spend = total - first_spend
    monetary = np.where(frequency > 0, repeat_spend / frequency.replace(0, np.nan), 0.0)
    return pd.DataFrame(
        {
            "frequency": frequency,
            "recency": (last - first).dt.days.astype(float),
            "T": (end.normalize() - first).dt.days.astype(float),
            "monetary": monetary,
        }
    )


def _check(summary: pd.DataFrame) -> None:
    if len(summary) < 10:
        raise DataError(f"customer lifetime value needs at least 10 customers with purchases to fit (got {len(summary)})")


@dataclass(frozen=True)
class BetaGeo:
    """BG/NBD parameters (time in days)."""

    r: float
    alpha: float
    a: float
    b: float

    @staticmethod
    def log_likelihood(params: np.ndarray, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = params
        a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        a2 = special.betaln(a, b + x) - special.betaln(a, b)
        a3 = -(r + x) * np.log(alpha + T)
        with np.errstate(divide="ignore"):
            a4 = np.where(
                x > 0,
                np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + tx),
                -np.inf,
            )
        return a1 + a2 + np.logaddexp(a3, a4)

    @classmethod
    def fit(cls, summary: pd.DataFrame, *, penalty: float = 0.0) -> BetaGeo:
        _check(summary)
        x, tx, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
        scale = max(float(T.max()), 1.0)  # fit on a unit time scale, report in days

        def loss(logp: np.ndarray) -> float:
            p = np.exp(logp)
            value = -cls.log_likelihood(p, x, tx / scale, T / scale).mean()
            return float(value + penalty * np.sum(p**2))

        best = None
        for start in (np.zeros(4), np.log([0.5, 0.1, 0.8, 2.5])):
            result = optimize.minimize(loss, start, method="L-BFGS-B", bounds=[(-10, 8)] * 4)
            if best is None or result.fun < best.fun:
                best = result
        r, alpha, a, b = np.exp(best.x)
        return cls(float(r), float(alpha * scale), float(a), float(b))

    def p_alive(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        ratio = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + tx)))
        odds = np.where(x > 0, a / np.maximum(b + x - 1, 1e-12) * ratio, 0.0)
        return 1.0 / (1.0 + odds)

    def p_any(self, t: float, summary: pd.DataFrame) -> np.ndarray:
        """Chance of at least one purchase in the next ``t`` days: alive now, and not waiting
        longer than ``t`` for the next purchase (a customer drops out only right after buying)."""
        x, tx, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
        wait = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + t)))
        return self.p_alive(x, tx, T) * (1 - wait)

    def expected_purchases(self, t: float, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Expected purchases in the next ``t`` days given each customer's history."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, tx, T = (np.asarray(v, float) for v in (x, tx, T))
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        # (a - 1) may be negative (a < 1): so is the bracket below, and the product is positive.
        first = (a + b + x - 1) / (a - 1)
        body = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp
        odds = np.where(x > 0, a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + tx)) ** (r + x), 0.0)
        out = first * body / (1 + odds)
        return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0, None)


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma spend parameters."""

    p: float
    q: float
    v: float

    @staticmethod
    def log_likelihood(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        p, q, v = params
        return (
            special.gammaln(p * x + q) - special.gammaln(p * x) - special.gammaln(q)
            + q * np.log(v) + (p * x - 1) * np.log(m) + p * x * np.log(x) - (p * x + q) * np.log(x * m + v)
        )

    @classmethod
    def fit(cls, summary: pd.DataFrame, *, penalty: float = 0.0) -> GammaGamma:
        repeat = summary[(summary["frequency"] > 0) & (summary["monetary"] > 0)]
        _check(repeat)
        x, m = repeat["frequency"].to_numpy(float), repeat["monetary"].to_numpy(float)
        scale = float(np.median(m))  # fit on spend relative to the median

        def loss(logp: np.ndarray) -> float:
            p = np.exp(logp)
            return float(-cls.log_likelihood(p, x, m / scale).mean() + penalty * np.sum(p**2))

        result = optimize.minimize(loss, np.zeros(3), method="L-BFGS-B", bounds=[(-10, 10)] * 3)
        p, q, v = np.exp(result.x)
        return cls(float(p), float(q), float(v * scale))

    def expected_spend(self, x: np.ndarray, m: np.ndarray, fallback: float | None = None) -> np.ndarray:
        """Expected spend per purchase; customers without a repeat purchase get the population mean."""
        p, q, v = self.p, self.q, self.v
        x, m = np.asarray(x, float), np.asarray(m, float)
        population = p * v / (q - 1) if q > 1 else (fallback if fallback is not None else float(np.nan))
        out = np.where(x > 0, (p * (v + x * m)) / np.maximum(p * x + q - 1, 1e-9), population)
        return out


@dataclass(frozen=True)
class CLVModel:
    """Both models of one store, fitted on its calibration period."""

    purchases: BetaGeo
    spend: GammaGamma
    end: pd.Timestamp  # the end of the calibration period (the models' "now")

    def predict(self, summary: pd.DataFrame, days: float) -> pd.DataFrame:
        """Per customer: ``p_alive``, ``purchases`` and ``spend`` expected in the next ``days``."""
        x, tx, T, m = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T", "monetary"))
        purchases = self.purchases.expected_purchases(days, x, tx, T)
        fallback = float(summary.loc[summary["frequency"] > 0, "monetary"].mean()) if (summary["frequency"] > 0).any() else 0.0
        per = self.spend.expected_spend(x, m, fallback=fallback)
        return pd.DataFrame(
            {"p_alive": self.purchases.p_alive(x, tx, T), "purchases": purchases, "spend": purchases * per},
            index=summary.index,
        )


def fit_clv(frame: pd.DataFrame, end: pd.Timestamp) -> tuple[CLVModel, pd.DataFrame]:
    """Fit both models on purchases before ``end``; returns the model and the summary it used."""
    summary = rfm_summary(frame, end)
    model = CLVModel(BetaGeo.fit(summary, penalty=1e-4), GammaGamma.fit(summary, penalty=1e-4), pd.Timestamp(end))
    return model, summary


def naive_forecast(summary: pd.DataFrame, days: float, frame: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """The "same rate as before" baseline: purchase days per day of the customer's life so far
    (first purchase to ``end``) times ``days``, and their mean spend per purchase day."""
    past = frame[frame["invoice_date"] < end]
    spend = (past["quantity"].astype(float) * past["unit_price"].astype(float)).groupby(past["customer_id"]).sum()
    count = summary["frequency"] + 1
    rate = count / np.maximum(summary["T"], 1.0)
    purchases = rate * days
    mean_spend = spend.reindex(summary.index).fillna(0.0) / count
    return pd.DataFrame({"purchases": purchases, "spend": purchases * mean_spend}, index=summary.index)
