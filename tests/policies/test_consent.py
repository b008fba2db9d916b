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
