"""Simulated consent records for data that came without any (the UCI Online Retail file).

The UCI transactions carry no consent. To run siloguard on them, the embedded sample ships
a consent file made by :func:`simulated_consent` (``sample/consent_sample.csv.gz``, see the
sample's README), and benchmarks make one the same way. It is a simulation, stated as such:
real deployments import the consents their stores collected (``siloguard consent import``).

Each customer, at their first purchase, is asked in store: a share accepts personalisation
(``personalize.profiling``), a smaller share also first-party marketing; a few of those who
accepted personalisation withdraw it on the web at a later purchase.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from siloguard.policies.consent_io import CONSENT_COLUMNS

__all__ = ["simulated_consent"]

PROFILING = "personalize.profiling"
MARKETING = "marketing.advertising.first_party.targeted"


def simulated_consent(
    frame: pd.DataFrame,
    *,
    profiling_rate: float = 0.92,
    marketing_rate: float = 0.6,
    withdraw_rate: float = 0.03,
    seed: int = 0,
    notice_version: str = "2010-12",
) -> pd.DataFrame:
    """Consent events (``CONSENT_COLUMNS``) for the customers of cleaned transactions."""
    for name, rate in (("profiling_rate", profiling_rate), ("marketing_rate", marketing_rate), ("withdraw_rate", withdraw_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {rate}")
    visits = frame.groupby("customer_id")["invoice_date"].agg(["min", "max"]).sort_index()
    rng = np.random.default_rng(seed)
    n = len(visits)
    profiling = rng.random(n) < profiling_rate
    marketing = profiling & (rng.random(n) < marketing_rate / max(profiling_rate, 1e-9))
    withdraws = profiling & (rng.random(n) < withdraw_rate) & (visits["max"] > visits["min"]).to_numpy()
    first = visits["min"].dt.tz_localize("UTC")
    later = first + (visits["max"].dt.tz_localize("UTC") - first) * rng.uniform(0.2, 1.0, n)
    ids = visits.index.astype(str)
    parts = []
    for mask, purpose, event, source, when in (
        (profiling, PROFILING, "grant", "store", first),
        (marketing, MARKETING, "grant", "store", first),
        (withdraws, PROFILING, "withdraw", "web", later),
    ):
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": ids[mask],
                    "store": "",
                    "purpose": purpose,
                    "event": event,
                    "source": source,
                    "notice_version": notice_version,
                    "at": when[mask].dt.floor("s").map(lambda t: t.isoformat()).to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)[list(CONSENT_COLUMNS)]
