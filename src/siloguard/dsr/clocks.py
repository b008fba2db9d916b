"""Legal clocks of data-subject requests: when an answer is due, and how far it may be extended.

Every clock runs in UTC and a deadline is the end of its last day (the next midnight UTC),
following Regulation 1182/71 on periods, dates and time limits, which the GDPR's periods
follow: a period counted in months ends on the same date of the last month, or on that
month's last day when it has no such date (received 31 January: due at the end of 28 or
29 February).

========================  ==========================================================
GDPR (Art. 12(3))         answer within one month of receipt; extendable once by two
                          further months, with the reasons given inside the first month
CCPA (Cal. Civ. Code      acknowledge within 10 business days; answer within 45 calendar
1798.130, CCPA regs       days of receipt; one extension of 45 days, notice given inside
7 CCR 7021, 7026)         the first 45; an opt-out of sale/sharing is applied within 15
                          business days and needs no identity verification
========================  ==========================================================

Business days are California business days: Monday to Friday except US federal and
California state holidays (the ``holidays`` package, subdivision CA).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache

from dateutil.relativedelta import relativedelta

from siloguard.dsr.errors import DsrConflict, DsrInvalid

__all__ = [
    "JURISDICTIONS",
    "KINDS",
    "Clock",
    "add_business_days",
    "clock_for",
    "extended_due",
]

JURISDICTIONS: tuple[str, ...] = ("gdpr", "ccpa")
#: access (GDPR Art. 15, CCPA right to know), erasure (Art. 17, right to delete), opt_out
#: (Art. 21 objection, CCPA opt-out of sale/sharing), consent (a change of consent).
KINDS: tuple[str, ...] = ("access", "erasure", "opt_out", "consent")

_CCPA_ACK_BUSINESS_DAYS = 10
_CCPA_RESPONSE_DAYS = 45
_CCPA_EXTENSION_DAYS = 45
_CCPA_OPT_OUT_BUSINESS_DAYS = 15
_GDPR_MONTHS = 1
_GDPR_EXTENSION_MONTHS = 2


@dataclass(frozen=True)
class Clock:
    """The deadlines of one request, as stored with it."""

    jurisdiction: str
    kind: str
    received_at: datetime
    due_at: datetime
    ack_due_at: datetime | None
    #: the last moment an extension may be announced (None: cannot be extended)
    extension_notice_by: datetime | None
    needs_verification: bool


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise DsrInvalid("request times must be timezone-aware")
    return at.astimezone(timezone.utc)


def _end_of(day: date) -> datetime:
    """The instant a period ending on ``day`` expires: the next midnight, UTC."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc)


@lru_cache(maxsize=8)
def _holidays(year: int) -> frozenset[date]:
    import holidays

    return frozenset(holidays.country_holidays("US", subdiv="CA", years=year).keys())


def is_business_day(day: date) -> bool:
    return day.weekday() < 5 and day not in _holidays(day.year)


def add_business_days(start: date, n: int) -> date:
    """The ``n``-th business day after ``start`` (the day of receipt does not count)."""
    day = start
    left = n
    while left > 0:
        day += timedelta(days=1)
        if is_business_day(day):
            left -= 1
    return day


def clock_for(jurisdiction: str, kind: str, received_at: datetime) -> Clock:
    """The deadlines of a request of ``kind`` received at ``received_at``."""
    if jurisdiction not in JURISDICTIONS:
        raise DsrInvalid(f"unknown jurisdiction {jurisdiction!r}: use one of {', '.join(JURISDICTIONS)}")
    if kind not in KINDS:
        raise DsrInvalid(f"unknown request type {kind!r}: use one of {', '.join(KINDS)}")
    received = _utc(received_at)
    day = received.date()
    if jurisdiction == "gdpr":
        due = _end_of(day + relativedelta(months=_GDPR_MONTHS))
        return Clock(jurisdiction, kind, received, due, None, due, needs_verification=True)
    if kind == "opt_out":
        due = _end_of(add_business_days(day, _CCPA_OPT_OUT_BUSINESS_DAYS))
        return Clock(jurisdiction, kind, received, due, None, None, needs_verification=False)
    due = _end_of(day + timedelta(days=_CCPA_RESPONSE_DAYS))
    ack = _end_of(add_business_days(day, _CCPA_ACK_BUSINESS_DAYS))
    return Clock(jurisdiction, kind, received, due, ack, due, needs_verification=True)


def extended_due(clock: Clock, *, at: datetime, already_extended: bool) -> datetime:
    """The new deadline if the request is extended at ``at``; refuses a late or second one."""
    now = _utc(at)
    if clock.extension_notice_by is None:
        raise DsrConflict(f"a {clock.jurisdiction} {clock.kind} request cannot be extended")
    if already_extended:
        raise DsrConflict("this request was extended already; the law allows one extension")
    if now >= clock.extension_notice_by:
        raise DsrConflict(
            "too late to extend: the extension must be announced before the original deadline "
            f"({clock.extension_notice_by.isoformat()})"
        )
    day = clock.received_at.date()
    if clock.jurisdiction == "gdpr":
        return _end_of(day + relativedelta(months=_GDPR_MONTHS + _GDPR_EXTENSION_MONTHS))
    return _end_of(day + timedelta(days=_CCPA_RESPONSE_DAYS + _CCPA_EXTENSION_DAYS))
