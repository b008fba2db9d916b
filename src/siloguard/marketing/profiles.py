"""Customer profiles: spending tier, lifecycle stage, interests and shopping habits.

Built from a store's gated transactions (pseudonymous ids, descriptions already scanned):

* **spending tier**: spend per 30 days of the customer's life with the store (first purchase
  to the "as of" day, at least 30 days), cut into the tiers of ``lifecycle.yaml`` by rank;
* **lifecycle stage**: the first rule of ``lifecycle.yaml`` the customer meets (new, active,
  at risk, lapsed); the rules are data, so a store can change them without code;
* **interests**: product groups learnt from the product descriptions (scikit-learn TF-IDF on
  word 1-2-grams, then k-means on the normalised vectors), each group named by its three
  highest-weighted terms; a customer's interests are the groups whose share of their spend
  most exceeds that group's share of the store's (lift; at least 5% of their spend);
* **habits**: the weekday and hour at which the customer most often bought (invoices).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from siloguard.errors import ConfigError, DataError

__all__ = ["Interests", "LifecycleRules", "build_profiles", "learn_interests", "load_rules", "profile_summary"]

RULES_FILE = Path(__file__).with_name("lifecycle.yaml")
_CONDITIONS = ("days_since_first_max", "days_since_last_max", "purchases_max")
#: A product group is among a customer's interests only if it took at least this share of their spend.
MIN_INTEREST_SHARE = 0.05
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class LifecycleRules:
    stages: tuple[dict, ...]
    tiers: tuple[tuple[str, float], ...]


@lru_cache(maxsize=4)
def load_rules(path: Path = RULES_FILE) -> LifecycleRules:
    """The stage rules and tiers of a rules file; ConfigError naming what is wrong."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        stages, tiers = data["stages"], data["tiers"]
        if not isinstance(stages, list) or not stages or not isinstance(tiers, list) or not tiers:
            raise TypeError
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise ConfigError(f"{path}: needs a list 'stages' and a list 'tiers' (see siloguard/marketing/lifecycle.yaml)") from None
    names = set()
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise ConfigError(f"{path}: stage {i + 1} needs a name")
        unknown = set(stage) - {"name", "description", *_CONDITIONS}
        if unknown:
            raise ConfigError(f"{path}: stage {stage['name']!r} has unknown condition(s) {', '.join(sorted(unknown))}; use {', '.join(_CONDITIONS)}")
        if any(not isinstance(stage[c], int) or stage[c] < 0 for c in _CONDITIONS if c in stage):
            raise ConfigError(f"{path}: stage {stage['name']!r}: conditions are whole numbers of days or purchases")
        names.add(stage["name"])
    if len(names) != len(stages):
        raise ConfigError(f"{path}: stage names must be unique")
    if any(c in stages[-1] for c in _CONDITIONS):
        raise ConfigError(f"{path}: the last stage must have no condition (it takes everyone left)")
    try:
        parsed = tuple((str(t["name"]), float(t["share"])) for t in tiers)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: each tier needs a name and a share") from None
    if abs(sum(s for _, s in parsed) - 1) > 1e-6 or any(s <= 0 for _, s in parsed):
        raise ConfigError(f"{path}: tier shares must be positive and add up to 1")
    return LifecycleRules(tuple(stages), parsed)


@dataclass(frozen=True)
class Interests:
    """Product groups: each stock code's group and each group's name."""

    group_of: pd.Series  # stock_code -> group number
    names: dict[int, str]


def learn_interests(frame: pd.DataFrame, *, groups: int = 12, seed: int = 0) -> Interests:
    """Group the products by their descriptions (TF-IDF + k-means); groups named by top terms."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    shelf = frame.dropna(subset=["description"]).assign(code=frame["stock_code"].astype(str))
    if shelf.empty:
        raise DataError("no product descriptions to learn interests from")
    text = shelf.groupby("code")["description"].agg(lambda s: s.astype(str).mode().iloc[0])
    vectoriser = TfidfVectorizer(
        lowercase=True, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", ngram_range=(1, 2), min_df=2, max_df=0.5,
        stop_words="english", sublinear_tf=True,
    )
    try:
        matrix = vectoriser.fit_transform(text.to_numpy())
    except ValueError:  # too few products for min_df
        vectoriser.set_params(min_df=1, max_df=1.0)
        matrix = vectoriser.fit_transform(text.to_numpy())
    k = max(1, min(groups, matrix.shape[0] // 3))
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(matrix)
    terms = np.asarray(vectoriser.get_feature_names_out())
    names = {}
    for g, centre in enumerate(model.cluster_centers_):
        top = [t for t in terms[np.argsort(centre)[::-1]] if " " not in t][:3]
        names[g] = " / ".join(top) if top else f"group {g + 1}"
    return Interests(pd.Series(model.labels_, index=text.index, name="group"), names)


def _stage(rules: LifecycleRules, since_first: np.ndarray, since_last: np.ndarray, purchases: np.ndarray) -> np.ndarray:
    out = np.full(len(since_first), rules.stages[-1]["name"], dtype=object)
    decided = np.zeros(len(since_first), dtype=bool)
    for stage in rules.stages:
        ok = ~decided
        if "days_since_first_max" in stage:
            ok &= since_first <= stage["days_since_first_max"]
        if "days_since_last_max" in stage:
            ok &= since_last <= stage["days_since_last_max"]
        if "purchases_max" in stage:
            ok &= purchases <= stage["purchases_max"]
        out[ok] = stage["name"]
        decided |= ok
    return out


def build_profiles(
    frame: pd.DataFrame, *, as_of: pd.Timestamp | None = None, rules: LifecycleRules | None = None,
    interests: Interests | None = None, top_interests: int = 3,
) -> pd.DataFrame:
    """One row per customer of ``frame`` (gated transactions): tier, stage, interests, habits."""
    rules = rules or load_rules()
    needed = ("customer_id", "invoice", "invoice_date", "quantity", "unit_price", "stock_code")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"profiles need the column(s) {', '.join(missing)}")
    columns = ["customer_id", "tier", "stage", "spend", "spend_per_30_days", "purchases", "days_since_last",
               "interests", "weekday", "hour"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    as_of = (as_of if as_of is not None else frame["invoice_date"].max().normalize() + pd.Timedelta(days=1))
    data = frame.assign(spend=frame["quantity"].astype(float) * frame["unit_price"].astype(float))
    by = data.groupby("customer_id", sort=True)
    first, last = by["invoice_date"].min(), by["invoice_date"].max()
    purchases = data.assign(day=data["invoice_date"].dt.normalize()).groupby("customer_id")["day"].nunique()
    spend = by["spend"].sum()
    since_first = (as_of - first).dt.days.to_numpy()
    since_last = (as_of - last).dt.days.to_numpy()
    per_30 = spend / np.maximum(since_first, 30) * 30
    # tiers by rank of spend per 30 days, highest first
    position = (per_30.rank(method="first", ascending=False).to_numpy() - 1) / len(per_30)  # 0 = top
    tier = np.full(len(per_30), rules.tiers[-1][0], dtype=object)
    bound = 0.0
    for name, share in rules.tiers:
        low, bound = bound, bound + share
        tier[(position >= low - 1e-12) & (position < bound - 1e-12)] = name
    out = pd.DataFrame(
        {
            "tier": tier,
            "stage": _stage(rules, since_first, since_last, purchases.reindex(spend.index).to_numpy()),
            "spend": spend.round(2),
            "spend_per_30_days": per_30.round(2),
            "purchases": purchases.reindex(spend.index).astype(int),
            "days_since_last": since_last.astype(int),
        },
        index=spend.index,
    )
    invoices = data.drop_duplicates("invoice")
    out["weekday"] = invoices.groupby("customer_id")["invoice_date"].agg(lambda s: _WEEKDAYS[int(s.dt.day_of_week.mode().iloc[0])])
    out["hour"] = invoices.groupby("customer_id")["invoice_date"].agg(lambda s: int(s.dt.hour.mode().iloc[0]))
    if interests is not None:
        group = data["stock_code"].astype(str).map(interests.group_of)
        spent = data.assign(group=group).dropna(subset=["group"]).groupby(["customer_id", "group"])["spend"].sum()
        # A group is an interest when it takes a larger share of the customer's spend than of
        # the store's (lift), and at least MIN_INTEREST_SHARE of it: the catch-all groups that
        # everyone buys from would otherwise be everyone's first interest.
        share = spent / spent.groupby(level="customer_id").transform("sum")
        base = spent.groupby(level="group").sum() / spent.sum()
        lift = share / base.reindex(share.index.get_level_values("group")).to_numpy()
        ranked = pd.DataFrame({"lift": lift, "share": share}).reset_index()
        ranked = ranked[ranked["share"] >= MIN_INTEREST_SHARE].sort_values(
            ["customer_id", "lift", "group"], ascending=[True, False, True]
        )
        top = ranked.groupby("customer_id").head(top_interests)
        out["interests"] = top.groupby("customer_id")["group"].agg(lambda s: "; ".join(interests.names[int(g)] for g in s))
    out["interests"] = out.get("interests", pd.Series(index=out.index, dtype=object)).fillna("")
    return out.reset_index()[columns]


def profile_summary(profiles: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Customers per tier, stage and interest group (counts only)."""
    interests: dict[str, int] = {}
    for text in profiles["interests"]:
        for name in filter(None, str(text).split("; ")):
            interests[name] = interests.get(name, 0) + 1
    return {
        "customers": {"all": len(profiles)},
        "tier": {str(k): int(v) for k, v in profiles["tier"].value_counts().items()},
        "stage": {str(k): int(v) for k, v in profiles["stage"].value_counts().items()},
        "interest": dict(sorted(interests.items(), key=lambda kv: -kv[1])),
    }
