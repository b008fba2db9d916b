"""What the request service and its parts share: names, constants and small helpers.

:mod:`siloguard.dsr.service` (the request lifecycle), :mod:`siloguard.dsr.erasure` (the
erasure task queue and receipts) and :mod:`siloguard.dsr.effects` (what a request changes in
the stores today: consent, GPC, access answers) all build on it; it imports none of them.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timezone

from siloguard.dsr.errors import DsrInvalid

__all__ = [
    "ANONYMOUS", "ANSWER_DELETED", "CODE_DIGITS", "CONSENT_KINDS", "EMAIL", "LOCK", "PURPOSE", "SUBJECT_ACTOR", "SYSTEM", "aware", "consent_purposes", "normalise_ref", "now",
]

PURPOSE = "essential.legal_obligation"
CONSENT_KINDS: tuple[str, ...] = ("grant", "withdraw")
LOCK = "dsr"  # the serialised transactions of the request tables
CODE_DIGITS = 8
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A plain ASCII address (the API schema states the same pattern): no display names,
# no quoted or internationalised local parts.
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}")
SYSTEM = "dsr-service"
SUBJECT_ACTOR = "data-subject"
#: The idempotency scope of a caller without credentials (see :meth:`DsrService.submit`).
ANONYMOUS = "anonymous"
#: What an access request's ``result`` becomes once its answer is deleted (retention, erasure).
ANSWER_DELETED = json.dumps({"answer_deleted": True})


def now() -> datetime:
    return datetime.now(timezone.utc)


def normalise_ref(customer_ref: object) -> str:
    """A customer reference as the stores write it: ``17850``, ``17850.0`` -> ``17850``."""
    text = str(customer_ref).strip()
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    if not _REF.fullmatch(text):
        raise DsrInvalid("customer_ref must be 1-64 letters, digits, '.', '_' or '-' (the customer number on a receipt)")
    return text


@functools.lru_cache(maxsize=1)
def consent_purposes() -> tuple[str, ...]:
    """Every purpose some data map rests on consent: withdrawn at erasure or objection."""
    from siloguard.policies.datamap import load_datamaps

    return tuple(sorted({p for m in load_datamaps().values() for p, basis in m.lawful_bases.items() if basis == "consent"}))




def aware(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite returns naive ones; they are stored in UTC)."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
