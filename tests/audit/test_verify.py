"""Whole-log verification: what passes, what fails, and why --against exists."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from siloguard.audit.log import AuditLog
from siloguard.errors import AuditIntegrityError
from tests.audit.helpers import Keys, gate_event, make_keys


def _fill(log: AuditLog, n: int, start: int = 0) -> None:
    log.append([gate_event(i) for i in range(start, start + n)])


def test_an_intact_log_verifies_and_says_what_it_established(audit_log: AuditLog, keys: Keys) -> None:
    _fill(audit_log, 10)
    first = audit_log.sign_head()
    _fill(audit_log, 7, start=10)
    latest = audit_log.sign_head()
    _fill(audit_log, 2, start=17)
    report = audit_log.verify(keys.public_key, against=first)
    assert report.tree_size == 19 and report.heads_checked == 2
    assert report.latest_head == latest and report.uncovered == 2 and report.against == first
    assert report.root_hash == audit_log.root()


def test_an_empty_log_verifies(audit_log: AuditLog, keys: Keys) -> None:
    report = audit_log.verify(keys.public_key)
    assert report.tree_size == 0 and report.latest_head is None


def test_events_that_no_head_vouches_for_fail(audit_log: AuditLog, keys: Keys) -> None:
    _fill(audit_log, 3)
    with pytest.raises(AuditIntegrityError, match="no signed tree head: nothing vouches for the 3 events"):
        audit_log.verify(keys.public_key)


def test_heads_by_another_key_fail(audit_log: AuditLog, keys: Keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _fill(audit_log, 3)
    audit_log.sign_head()
    other = make_keys(tmp_path, "other")
    with pytest.raises(AuditIntegrityError, match="signed by another key"):
        audit_log.verify(other.public_key)


def test_truncation_with_its_heads_removed_is_caught_only_against_a_saved_head(
    audit_log: AuditLog, keys: Keys, migrated_engine: Engine
) -> None:
    """Someone with the database can cut the log's tail *and* the heads covering it; what
    is left is a smaller valid log. A head the officer kept elsewhere exposes it."""
    _fill(audit_log, 8)
    audit_log.sign_head()
    _fill(audit_log, 8, start=8)
    saved = audit_log.sign_head()
    with migrated_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq >= 8"))
        conn.execute(sa.text("DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > 8"))
        conn.execute(sa.text("DELETE FROM audit_heads WHERE seq >= 1"))
    audit_log.verify(keys.public_key)  # on its own, a consistent (shorter) log
    with pytest.raises(AuditIntegrityError) as info:
        audit_log.verify(keys.public_key, against=saved)
    assert any("no longer in the log" in p for p in info.value.problems)
    assert any("the log was truncated" in p for p in info.value.problems)


def test_every_problem_is_listed_and_the_message_sums_them_up(audit_log: AuditLog, keys: Keys, migrated_engine: Engine) -> None:
    _fill(audit_log, 12)
    audit_log.sign_head()
    with migrated_engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET leaf_hash = :h WHERE seq = 4"), {"h": b"\x00" * 32})
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 6"))
    with pytest.raises(AuditIntegrityError) as info:
        audit_log.verify(keys.public_key)
    problems = info.value.problems
    assert "event #4: its stored leaf hash does not match its bytes" in problems
    assert "events 6..6 are missing: deleted from the log" in problems
    assert any(p.startswith("tree head #0 covers 12 events but the log holds 11") for p in problems)
    assert str(info.value).startswith(f"audit log failed verification: {len(problems)} problem(s)")
