"""Two model versions on a store's customers: an offline A/B test, inside the store.

Each consenting customer (``personalize.profiling``, through the store's gate) is assigned to
version A or B by a stable hash of the pair of versions and the customer's pseudonym
(:func:`arm_of`): the same customer always lands in the same arm for the same pair, whatever
the order of the data, and nobody outside the store can recompute it (the pseudonym is keyed).
Each arm's customers are scored by their arm's model as of 28 days before the end of the
store's data, and judged on what they bought in those 28 days: NDCG@10 and HR@10 over the
whole catalogue (:func:`siloguard.recommender.metrics.ranking_metrics`, per customer), with
95% intervals (t interval for the mean NDCG, Wilson for the HR) and the difference B - A
(Welch's t interval; Newcombe's for HR).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError

__all__ = ["WINDOW_DAYS", "arm_of", "compare_versions", "version_dir"]

WINDOW_DAYS = 28


def arm_of(subject: str, version_a: str, version_b: str) -> str:
    """``"A"`` or ``"B"`` for a customer's pseudonym, stable for this pair of versions."""
    digest = hashlib.sha256(f"{version_a}|{version_b}|{subject}".encode()).digest()
    return "A" if digest[0] & 1 == 0 else "B"


def version_dir(registry: Path, version: str) -> Path:
    """``REGISTRY/models/vN`` (the coordinator's registry layout); ConfigError if it is missing."""
    if not version.startswith("v") or not version[1:].isdigit():
        raise ConfigError(f"model version {version!r}: give it as v<number>, e.g. v1 (siloguard model list)")
    path = Path(registry) / "models" / version
    if not (path / "model.pt").is_file():
        raise ConfigError(f"no model {version} in {Path(registry) / 'models'}: see siloguard model list --run for the versions")
    return path


def _mean_interval(values: np.ndarray) -> dict[str, float]:
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan")}
    ci = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values)) if values.std() > 0 else (mean, mean)
    return {"mean": round(mean, 4), "low": round(float(ci[0]), 4), "high": round(float(ci[1]), 4)}


def _per_customer(loaded, users, data, rows: np.ndarray) -> pd.DataFrame:  # noqa: ANN001
    from siloguard.recommender.metrics import ranking_metrics
    from siloguard.recommender.model import score_users

    out = []
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        scores = score_users(loaded.model, users, data.history, chunk)
        for i, row in enumerate(chunk):
            m = ranking_metrics(scores[i : i + 1], data.truth[row])
            out.append((row, m["ndcg@10"], m["hr@10"]))
    return pd.DataFrame(out, columns=["row", "ndcg", "hr"])


def compare_versions(
    settings: Settings, store: str, registry: Path, version_a: str, version_b: str, *, staff: str = "operator",
) -> dict[str, Any]:
    """Per-arm NDCG@10 and HR@10 with 95% intervals, and B - A; see the module's docstring."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

    from siloguard.clients.marketing import PROFILING, gated_frame, staff_principal
    from siloguard.clients.private import load_private_users
    from siloguard.clients.scoring import load_model
    from siloguard.clients.store import build_store

    if version_a == version_b:
        raise ConfigError("compare two different versions (e.g. v1 v2)")
    gated = gated_frame(settings, store, staff_principal(store, staff), PROFILING)
    frame = gated.frame
    if frame.empty:
        raise DataError(f"store {store!r}: no customer consents to profiling ({PROFILING}) now")
    end = (frame["invoice_date"].max() + pd.Timedelta(days=1)).normalize()
    cutoff = end - pd.Timedelta(days=WINDOW_DAYS)
    arms: dict[str, Any] = {}
    per: dict[str, pd.DataFrame] = {}
    for arm, version in (("A", version_a), ("B", version_b)):
        loaded = load_model(settings, version_dir(registry, version) / "model.pt")
        data = build_store(store, frame, loaded.catalogue, str(cutoff.date()), str(end.date()))
        users = load_private_users(settings, store, data.subjects, loaded.dim, seed=settings.model.seed)
        mine = np.array([arm_of(str(s), version_a, version_b) == arm for s in data.subjects])
        bought = np.diff(data.truth.indptr) > 0
        rows = np.flatnonzero(mine & bought)
        per[arm] = _per_customer(loaded, users, data, rows)
        hits = int(per[arm]["hr"].sum())
        n = len(per[arm])
        low, high = proportion_confint(hits, n, alpha=0.05, method="wilson") if n else (float("nan"), float("nan"))
        arms[arm] = {
            "version": version, "customers": int(mine.sum()), "evaluated": n,
            "ndcg@10": _mean_interval(per[arm]["ndcg"].to_numpy()),
            "hr@10": {"mean": round(hits / n, 4) if n else None, "low": round(float(low), 4), "high": round(float(high), 4)},
        }
    a, b = per["A"], per["B"]
    if min(len(a), len(b)) < 2:
        raise DataError("too few customers bought anything in the last 28 days to compare the versions (fewer than 2 in an arm)")
    diff = stats.ttest_ind(b["ndcg"], a["ndcg"], equal_var=False).confidence_interval(0.95)
    hr_low, hr_high = confint_proportions_2indep(int(b["hr"].sum()), len(b), int(a["hr"].sum()), len(a), method="newcomb", compare="diff")
    return {
        "store": store, "window": {"from": str(cutoff.date()), "to": str((end - pd.Timedelta(days=1)).date())},
        "assignment": "sha256(version A | version B | customer pseudonym), lowest bit: 0 = A, 1 = B",
        "arms": arms,
        "difference_b_minus_a": {
            "ndcg@10": {"estimate": round(float(b["ndcg"].mean() - a["ndcg"].mean()), 4), "low": round(float(diff.low), 4), "high": round(float(diff.high), 4)},
            "hr@10": {"estimate": round(float(b["hr"].mean() - a["hr"].mean()), 4), "low": round(float(hr_low), 4), "high": round(float(hr_high), 4)},
        },
        "decision": gated.decision_id,
    }
