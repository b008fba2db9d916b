"""The SQL consent registry: same rules as the gate's in-memory stand-in, on a real database."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from siloguard.errors import ConfigError
from siloguard.policies.consent import SALE_AND_SHARING, ConsentRegistry
from siloguard.policies.gate import InMemoryConsentSource
from tests.storage.databases import BACKENDS, fresh_database

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
TARGETED = "marketing.advertising.first_party.targeted"


@pytest.fixture(params=BACKENDS)
def registry(request, tmp_path: Path):
    with fresh_database(request.param, tmp_path) as url:
        reg = ConsentRegistry(url)
        yield reg
        reg.close()


def test_when_consent_is_withdrawn_then_it_counts_only_before_the_withdrawal(registry: ConsentRegistry) -> None:
    registry.record("v1.aa", TARGETED, "grant", source="web", notice_version="n1", at=T0)
    registry.record("v1.aa", TARGETED, "withdraw", source="api", at=T0 + timedelta(days=10))
    assert registry.has_basis("v1.aa", TARGETED, T0 + timedelta(days=5))
    assert not registry.has_basis("v1.aa", TARGETED, T0 + timedelta(days=10))
    assert not registry.has_basis("v1.aa", TARGETED)
    assert not registry.has_basis("v1.aa", TARGETED, T0 - timedelta(seconds=1))  # nothing yet


def test_when_grant_and_withdrawal_share_a_time_then_the_withdrawal_wins(registry: ConsentRegistry) -> None:
    registry.record("v1.bb", TARGETED, "grant", source="web", at=T0)
    registry.record("v1.bb", TARGETED, "withdraw", source="store", at=T0)
    assert not registry.has_basis("v1.bb", TARGETED, T0)


def test_when_consent_is_given_to_a_parent_purpose_then_it_covers_the_children(registry: ConsentRegistry) -> None:
    registry.record("v1.cc", "marketing", "grant", source="web", at=T0)
    assert registry.has_basis("v1.cc", TARGETED, T0)
    registry.record("v1.cc", TARGETED, "withdraw", source="web", at=T0 + timedelta(hours=1))
    assert not registry.has_basis("v1.cc", TARGETED, T0 + timedelta(hours=2))
    assert registry.has_basis("v1.cc", "marketing", T0 + timedelta(hours=2))  # the parent stays


def test_when_a_gpc_signal_arrives_then_an_earlier_opt_in_to_sharing_no_longer_counts(registry: ConsentRegistry) -> None:
    for purpose in SALE_AND_SHARING:
        registry.record("v1.dd", purpose, "grant", source="web", at=T0)
    registry.record_gpc("v1.dd", at=T0 + timedelta(days=1))
    for purpose in SALE_AND_SHARING:
        assert registry.has_basis("v1.dd", purpose, T0 + timedelta(hours=1))
        assert not registry.has_basis("v1.dd", purpose, T0 + timedelta(days=2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("v1.ee", TARGETED, "maybe"), "unknown consent event"),
        (("v1.ee", "marketing.spam", "grant"), "unknown purpose"),
        (("", TARGETED, "grant"), "reference of the customer"),
    ],
)
def test_when_an_event_is_malformed_then_nothing_is_written(registry: ConsentRegistry, args, message) -> None:
    registry.record("v1.ok", TARGETED, "grant", source="web", at=T0)
    with pytest.raises(ConfigError, match=message):
        registry.record_many([("v1.ee", TARGETED, "grant"), args], source="web", at=T0)
    assert registry.consented(TARGETED, T0) == {"v1.ok"}


def test_when_the_source_is_unknown_or_the_time_naive_then_it_is_refused(registry: ConsentRegistry) -> None:
    with pytest.raises(ConfigError, match="source"):
        registry.record("v1.ff", TARGETED, "grant", source="fax", at=T0)
    with pytest.raises(ConfigError, match="timezone"):
        registry.record("v1.ff", TARGETED, "grant", source="web", at=datetime(2026, 1, 1))


def test_when_random_histories_are_replayed_then_the_registry_agrees_with_the_in_memory_rules(
    registry: ConsentRegistry,
) -> None:
    rng = random.Random(7)
    memory = InMemoryConsentSource()
    purposes = ["marketing", "marketing.advertising", TARGETED, "personalize"]
    subjects = [f"v1.{i:02x}" for i in range(40)]
    for _ in range(400):
        subject, purpose = rng.choice(subjects), rng.choice(purposes)
        when = T0 + timedelta(hours=rng.randrange(48))
        grant = rng.random() < 0.6
        registry.record(subject, purpose, "grant" if grant else "withdraw", source="web", at=when)
        (memory.grant if grant else memory.withdraw)(subject, purpose, when)
    for hours in (0, 12, 24, 47, 60):
        at = T0 + timedelta(hours=hours)
        for purpose in purposes:
            expected = memory.subjects_with_basis(purpose, subjects, at)
            assert registry.subjects_with_basis(purpose, subjects, at) == expected
            assert registry.consented(purpose, at) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_when_a_database_from_before_the_order_key_is_upgraded_then_its_events_keep_their_meaning(
    backend: str, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from siloguard.storage.db import create_engine, upgrade_database

    with fresh_database(backend, tmp_path) as url:
        engine = create_engine(url)
        upgrade_database(engine, "0003_consent")
        old = [
            ("v1.a", TARGETED, "grant", T0),
            ("v1.a", TARGETED, "withdraw", T0 + timedelta(days=1)),
            ("v1.b", "marketing", "grant", T0),  # a parent key covers the purpose
            ("v1.c", TARGETED, "grant", T0 + timedelta(microseconds=7)),
            ("v1.c", TARGETED, "withdraw", T0 + timedelta(microseconds=7)),  # tie: withdrawal wins
        ]
        with engine.begin() as conn:
            conn.execute(
                sa.text("insert into consent_events (subject, purpose, kind, source, at) values (:s, :p, :k, 'web', :at)"),
                [{"s": s, "p": p, "k": k, "at": at} for s, p, k, at in old],
            )
        upgrade_database(engine)
        engine.dispose()
        registry = ConsentRegistry(url)
        try:
            assert registry.consented(TARGETED, T0 + timedelta(hours=1)) == {"v1.a", "v1.b"}
            assert registry.consented(TARGETED, T0 + timedelta(days=2)) == {"v1.b"}
            registry.record("v1.c", TARGETED, "grant", source="api", at=T0 + timedelta(days=3))
            assert registry.consented(TARGETED, T0 + timedelta(days=4)) == {"v1.b", "v1.c"}
        finally:
            registry.close()


def test_when_many_subjects_are_asked_then_lookups_and_full_scans_agree(registry: ConsentRegistry) -> None:
    """Over 20,000 subjects the registry scans the purpose; up to that it looks subjects up
    in chunks of 1,000: both paths, and the parent key's events, must give the same answer."""
    rng = random.Random(7)
    events = []
    for i in range(25_000):
        subject = f"s{i}"
        granted = T0 + timedelta(minutes=rng.randrange(10_000))
        events.append((subject, "marketing" if i % 20 == 0 else TARGETED, "grant", "web", None, granted))
        if i % 7 == 0:
            events.append((subject, TARGETED, "withdraw", "api", None, granted + timedelta(minutes=rng.randrange(-5, 5))))
    registry.record_events(events)
    at = T0 + timedelta(days=30)
    everyone = {f"s{i}" for i in range(25_000)}
    full = registry.subjects_with_basis(TARGETED, everyone, at)
    assert full == registry.consented(TARGETED, at)
    some = set(rng.sample(sorted(everyone), 2_500))
    assert registry.subjects_with_basis(TARGETED, some, at) == full & some
    assert 0 < len(full) < len(everyone)


# ---- the current-state table (0008_consent_state) -------------------------------------------

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_PURPOSES = ["marketing", "marketing.advertising", TARGETED, "personalize", "personalize.profiling"]
_event = st.tuples(
    st.integers(0, 7),  # subject
    st.sampled_from(_PURPOSES),
    st.sampled_from(["grant", "withdraw", "opt_out"]),
    st.integers(-48, 48),  # hours from T0; some events come in after later ones (imports)
)


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(st.lists(_event, min_size=1, max_size=6), min_size=1, max_size=8),
       erased=st.sets(st.integers(0, 7), max_size=2))
def test_when_random_histories_are_written_then_the_state_rebuilds_from_the_events_and_answers_alike(
    registry: ConsentRegistry, history: list[list[tuple[int, str, str, int]]], erased: set[int]
) -> None:
    """Random batches of events (in any time order, opt-outs and erasures included): the state
    table is exactly what the event log gives, and "now" read from it equals the rules replayed
    in memory over the events (the same examples as the as-of path of the events)."""
    import uuid

    prefix = f"h{uuid.uuid4().hex[:8]}."  # the fixture's database outlives one example
    memory = InMemoryConsentSource()
    subjects = [f"{prefix}{i}" for i in range(8)]
    for batch in history:
        registry.record_events([(subjects[s], p, k, "web", None, T0 + timedelta(hours=h)) for s, p, k, h in batch])
    registry.forget([subjects[i] for i in erased])
    for batch in history:
        for s, p, k, h in batch:
            if s not in erased:
                (memory.grant if k == "grant" else memory.withdraw)(subjects[s], p, T0 + timedelta(hours=h))
    diff = registry.state_differences()
    assert (diff["missing"], diff["extra"]) == (0, 0)
    now = T0 + timedelta(days=3)  # after every event: answered from the state
    for purpose in _PURPOSES:
        expected = memory.subjects_with_basis(purpose, subjects, now)
        assert {s for s in registry.consented(purpose, now) if s.startswith(prefix)} == expected
        assert registry.subjects_with_basis(purpose, subjects, now) == expected


def test_when_the_state_table_is_changed_behind_the_registry_then_the_check_sees_it_and_a_rebuild_repairs_it(
    registry: ConsentRegistry,
) -> None:
    import sqlalchemy as sa

    registry.record("v1.s1", TARGETED, "grant", source="web", at=T0)
    registry.record("v1.s1", TARGETED, "withdraw", source="web", at=T0 + timedelta(days=1))
    registry.record("v1.s2", "marketing", "grant", source="web", at=T0)
    registry.record("v1.s3", TARGETED, "grant", source="web", at=T0)
    assert registry.state_differences() == {"missing": 0, "extra": 0, "events": 4, "rows": 3}
    later = T0 + timedelta(days=2)
    assert registry.consented(TARGETED, later) == {"v1.s2", "v1.s3"}
    with registry.engine.begin() as conn:
        # the withdrawal of s1 rolled back to its grant: a withdrawn consent would read as granted
        conn.execute(sa.text("UPDATE consent_state SET ord = ord - 1 - 2 * 86400000000 WHERE subject = 'v1.s1'"))
        conn.execute(sa.text("DELETE FROM consent_state WHERE subject = 'v1.s3'"))
        conn.execute(sa.text("INSERT INTO consent_state (purpose, subject, ord) VALUES ('personalize', 'v1.zz', 2)"))
    assert registry.consented(TARGETED, later) == {"v1.s1", "v1.s2"}  # what a broken state would serve
    diff = registry.state_differences()
    assert (diff["missing"], diff["extra"]) == (2, 2)
    assert registry.rebuild_state() == 3
    assert registry.state_differences() == {"missing": 0, "extra": 0, "events": 4, "rows": 3}
    assert registry.consented(TARGETED, later) == {"v1.s2", "v1.s3"}


def test_when_an_event_lies_ahead_then_now_is_answered_from_the_events(registry: ConsentRegistry) -> None:
    """A withdrawal recorded for a later time must not end the consent before that time."""
    registry.record("v1.f", TARGETED, "grant", source="web", at=T0)
    registry.record("v1.f", TARGETED, "withdraw", source="web", at=T0 + timedelta(days=10))
    assert registry.consented(TARGETED, T0 + timedelta(days=1)) == {"v1.f"}
    assert registry.subjects_with_basis(TARGETED, ["v1.f"], T0 + timedelta(days=1)) == {"v1.f"}
    assert registry.consented(TARGETED, T0 + timedelta(days=11)) == set()


@pytest.mark.parametrize("backend", BACKENDS)
def test_when_a_database_from_before_the_state_table_is_upgraded_then_the_state_is_filled_from_the_events(
    backend: str, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from siloguard.storage.db import create_engine, upgrade_database

    with fresh_database(backend, tmp_path) as url:
        engine = create_engine(url)
        upgrade_database(engine, "0007_store_tasks")
        old = [
            ("v1.a", TARGETED, "grant", 2 * 1000),
            ("v1.a", TARGETED, "withdraw", 2 * 2000 + 1),
            ("v1.b", "marketing", "grant", 2 * 1000),
            ("v1.c", TARGETED, "withdraw", 2 * 500 + 1),
            ("v1.c", TARGETED, "grant", 2 * 900),
        ]
        with engine.begin() as conn:
            conn.execute(
                sa.text("insert into consent_events (subject, purpose, kind, source, at, ord) values (:s, :p, :k, 'web', :at, :o)"),
                [{"s": s, "p": p, "k": k, "at": T0, "o": o} for s, p, k, o in old],
            )
        upgrade_database(engine)
        with engine.connect() as conn:
            rows = set(conn.execute(sa.text("select purpose, subject, ord from consent_state")).all())
        engine.dispose()
        assert rows == {(TARGETED, "v1.a", 4001), ("marketing", "v1.b", 2000), (TARGETED, "v1.c", 1800)}
        registry = ConsentRegistry(url)
        try:
            assert registry.state_differences()["missing"] == 0
            assert registry.consented(TARGETED, T0) == {"v1.b", "v1.c"}
        finally:
            registry.close()
