"""Profiles: lifecycle rules as data, tiers by spend rate, interests named by their terms."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from siloguard.errors import ConfigError
from siloguard.marketing.profiles import build_profiles, learn_interests, load_rules, profile_summary


def _frame() -> pd.DataFrame:
    rows = []
    # c1: bought long ago only; c2: new this month; c3: regular, recent, big spender
    for cust, days, price in (("c1", [300, 290], 5.0), ("c2", [10], 8.0), ("c3", [200, 120, 60, 5], 40.0)):
        for i, d in enumerate(days):
            rows.append({"customer_id": cust, "invoice": f"{cust}-{i}", "stock_code": "CANDLE" if cust != "c2" else "MUG",
                         "invoice_date": pd.Timestamp("2011-12-01 14:00") - pd.Timedelta(days=d), "quantity": 2, "unit_price": price})
    return pd.DataFrame(rows)


def test_when_profiles_are_built_then_stage_and_tier_follow_the_rules_file() -> None:
    profiles = build_profiles(_frame(), as_of=pd.Timestamp("2011-12-02")).set_index("customer_id")
    assert profiles.loc["c1", "stage"] == "lapsed"
    assert profiles.loc["c2", "stage"] == "new"
    assert profiles.loc["c3", "stage"] == "active"
    assert profiles.loc["c3", "tier"] == "high"
    assert profiles.loc["c3", "hour"] == 14
    summary = profile_summary(profiles.reset_index())
    assert summary["customers"]["all"] == 3 and sum(summary["stage"].values()) == 3


def test_when_the_rules_file_changes_then_stages_change_without_code(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "stages:\n  - name: recent\n    days_since_last_max: 400\n  - name: other\n"
        "tiers:\n  - name: all\n    share: 1.0\n"
    )
    profiles = build_profiles(_frame(), as_of=pd.Timestamp("2011-12-02"), rules=load_rules(rules))
    assert set(profiles["stage"]) == {"recent"} and set(profiles["tier"]) == {"all"}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("stages:\n  - name: a\n    days_since_last_max: 3\ntiers:\n  - name: t\n    share: 1\n", "last stage"),
        ("stages:\n  - name: a\n    colour: 3\n  - name: b\ntiers:\n  - name: t\n    share: 1\n", "unknown condition"),
        ("stages:\n  - name: b\ntiers:\n  - name: t\n    share: 0.5\n", "add up to 1"),
    ],
)
def test_when_a_rules_file_is_wrong_then_it_is_refused_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_rules(path)


def test_when_interests_are_learnt_then_groups_are_named_by_their_top_terms() -> None:
    words = {"candle": ["VANILLA CANDLE", "ROSE CANDLE HOLDER", "CANDLE SET", "TEA LIGHT CANDLE"],
             "mug": ["RED MUG", "BLUE MUG", "MUG SPOTTY", "MUG TEA"],
             "bag": ["JUMBO BAG RED", "JUMBO BAG PINK", "LUNCH BAG", "BAG VINTAGE"]}
    products = pd.DataFrame(
        [{"stock_code": f"{k}{i}", "description": d} for k, ds in words.items() for i, d in enumerate(ds)]
    )
    interests = learn_interests(products, groups=3, seed=0)
    for key in words:
        groups = {int(interests.group_of[f"{key}{i}"]) for i in range(4)}
        assert len(groups) == 1
        assert key in interests.names[groups.pop()]


def test_when_everyone_buys_from_a_group_then_a_customers_interest_is_where_they_over_index() -> None:
    from siloguard.marketing.profiles import Interests

    interests = Interests(pd.Series({"CANDLE": 0, "MUG": 1}, name="group"), {0: "candles", 1: "mugs"})
    frame = _frame()
    extra = frame[frame["customer_id"] == "c1"].assign(stock_code="MUG", invoice=lambda f: f["invoice"] + "m")
    frame = pd.concat([frame, extra.assign(unit_price=2.0)])  # c1: mostly candles, some mugs
    profiles = build_profiles(frame, as_of=pd.Timestamp("2011-12-02"), interests=interests).set_index("customer_id")
    # the store spends most on candles; c1's share on mugs is above the store's: mugs first
    assert profiles.loc["c1", "interests"].split("; ")[0] == "mugs"
    assert profiles.loc["c3", "interests"] == "candles"
