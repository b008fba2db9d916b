"""Legal clocks: GDPR months (month ends), CCPA business days, 45 days and extensions."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from siloguard.dsr.clocks import add_business_days, clock_for, extended_due
from siloguard.dsr.errors import DsrConflict, DsrInvalid

UTC = timezone.utc


def at(y: int, m: int, d: int, h: int = 10) -> datetime:
    return datetime(y, m, d, h, tzinfo=UTC)


def end_of(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC) + timedelta(days=1)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (at(2026, 1, 31), end_of(2026, 2, 28)),  # no 31 February: the month's last day
        (at(2028, 1, 31), end_of(2028, 2, 29)),  # leap year
        (at(2026, 1, 15), end_of(2026, 2, 15)),
        (at(2026, 3, 31), end_of(2026, 4, 30)),
        (at(2026, 12, 31, 23), end_of(2027, 1, 31)),
    ],
)
def test_gdpr_answer_is_due_one_month_after_receipt_at_the_end_of_the_day(received: datetime, due: datetime) -> None:
    clock = clock_for("gdpr", "erasure", received)
    assert clock.due_at == due
    assert clock.ack_due_at is None and clock.needs_verification
    assert clock.extension_notice_by == due


def test_gdpr_extension_adds_two_months_to_the_first_and_only_inside_the_first_month() -> None:
    clock = clock_for("gdpr", "access", at(2026, 1, 31))
    assert extended_due(clock, at=at(2026, 2, 20), already_extended=False) == end_of(2026, 4, 30)
    with pytest.raises(DsrConflict, match="too late"):
        extended_due(clock, at=at(2026, 3, 1, 0), already_extended=False)
    with pytest.raises(DsrConflict, match="one extension"):
        extended_due(clock, at=at(2026, 2, 1), already_extended=True)


def test_business_days_skip_weekends_and_california_holidays() -> None:
    # Friday 2026-07-03 is the observed Independence Day holiday.
    assert add_business_days(date(2026, 7, 1), 1) == date(2026, 7, 2)
    assert add_business_days(date(2026, 7, 2), 1) == date(2026, 7, 6)
    # Thanksgiving (26 Nov) and the day after (a California holiday) are skipped.
    assert add_business_days(date(2026, 11, 25), 1) == date(2026, 11, 30)


def test_ccpa_acknowledge_in_10_business_days_answer_in_45_calendar_days() -> None:
    received = at(2026, 1, 30)  # a Friday
    clock = clock_for("ccpa", "erasure", received)
    assert clock.due_at == end_of(2026, 3, 16)  # 30 Jan + 45 days
    # 10 business days: 2,3,4,5,6, 9,10,11,12,13 February (no holiday in between)
    assert clock.ack_due_at == end_of(2026, 2, 13)
    assert clock.needs_verification


def test_ccpa_ack_deadline_moves_past_presidents_day() -> None:
    clock = clock_for("ccpa", "access", at(2026, 2, 6))  # Friday; Presidents' Day is Mon 16 Feb
    assert clock.ack_due_at == end_of(2026, 2, 23)


def test_ccpa_extension_is_45_more_days_once_with_notice_before_the_first_deadline() -> None:
    clock = clock_for("ccpa", "erasure", at(2026, 1, 31))
    assert extended_due(clock, at=at(2026, 3, 1), already_extended=False) == end_of(2026, 5, 1)  # 31 Jan + 90 days
    with pytest.raises(DsrConflict, match="too late"):
        extended_due(clock, at=clock.due_at, already_extended=False)


def test_ccpa_opt_out_applies_within_15_business_days_without_verification_or_extension() -> None:
    clock = clock_for("ccpa", "opt_out", at(2026, 12, 18))  # Friday before Christmas
    # 21,22,23,24 (25 Christmas), 28,29,30,31 (1 Jan), 4,5,6,7,8,11,12 January
    assert clock.due_at == end_of(2027, 1, 12)
    assert not clock.needs_verification
    with pytest.raises(DsrConflict, match="cannot be extended"):
        extended_due(clock, at=at(2026, 12, 19), already_extended=False)


def test_gdpr_objection_needs_verification_and_has_the_one_month_clock() -> None:
    clock = clock_for("gdpr", "opt_out", at(2026, 5, 31))
    assert clock.due_at == end_of(2026, 6, 30) and clock.needs_verification


@pytest.mark.parametrize(("jur", "kind"), [("hipaa", "access"), ("gdpr", "rectify")])
def test_unknown_jurisdiction_or_kind_is_refused(jur: str, kind: str) -> None:
    with pytest.raises(DsrInvalid):
        clock_for(jur, kind, at(2026, 1, 1))


def test_naive_times_are_refused() -> None:
    with pytest.raises(DsrInvalid, match="timezone-aware"):
        clock_for("gdpr", "access", datetime(2026, 1, 1))
