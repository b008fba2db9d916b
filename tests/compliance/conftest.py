"""Fixtures for the compliance rules: the tiny retail data as stores, and contexts built on it.

Every rule gets a passing and a failing fixture in test_rules.py; a failing one changes
exactly one thing of the shipped records or data maps (``dataclasses.replace``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from siloguard.compliance.context import Context
from siloguard.compliance.engine import Result, evaluate
from siloguard.compliance.records import Activity, Records, load_records
from siloguard.compliance.rules import load_rules
from siloguard.config import Settings
from siloguard.policies.datamap import DataMap, load_datamaps
from tests.storage.databases import fresh_database

#: A fixed wall clock for the rules (consent, deadlines, DPIA dates): the tests' "today".
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def settings(tiny_settings: Settings, tmp_path: Path) -> Settings:
    """The tiny data (3 stores: france, germany, united-kingdom), keys and database in tmp_path."""
    return tiny_settings.with_overrides(keys={"root": tmp_path / "keys"}, compliance={"as_of": "data"})


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(settings: Settings, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """``settings`` on a fresh database, once per backend (PostgreSQL when SILOGUARD_TEST_DATABASE_URL is set)."""
    directory = tmp_path / request.param
    directory.mkdir()
    with fresh_database(request.param, directory) as url:
        yield settings.with_overrides(database={"url": url})


@pytest.fixture
def records() -> Records:
    return load_records()


@pytest.fixture
def datamaps() -> dict[str, DataMap]:
    return load_datamaps()


def with_activity(records: Records, activity_id: str, **changes: Any) -> Records:
    """The records with one activity changed."""
    activities = dict(records.activities)
    activities[activity_id] = replace(activities[activity_id], **changes)
    return replace(records, activities=activities)


def add_activity(records: Records, activity: Activity) -> Records:
    return replace(records, activities={**records.activities, activity.id: activity})


@pytest.fixture
def run_rule(settings: Settings, records: Records, datamaps: dict[str, DataMap]) -> Iterator[Callable[..., Result]]:
    """Evaluate one rule: ``run_rule(rule_id, records=..., datamaps=..., settings=..., scope=...)``."""
    contexts: list[Context] = []
    rules = load_rules()

    def run(rule_id: str, *, scope: str = "check", **overrides: Any) -> Result:
        ctx = Context(
            overrides.pop("settings", settings),
            now=overrides.pop("now", NOW),
            records=overrides.pop("records", records),
            datamaps=overrides.pop("datamaps", datamaps),
            engine=overrides.pop("engine", None),
        )
        assert not overrides, overrides
        contexts.append(ctx)
        (result,) = evaluate(ctx, [rules[rule_id]], scope=scope)
        return result

    yield run
    for ctx in contexts:
        ctx.close()
