"""Errors a siloguard user can see.

Every error says what was wrong and what to do about it, in one line, and never
carries personal data (no customer ids, names, emails, or raw cell values).

    SiloguardError                 base; ``exit_code`` is what the CLI exits with
    ├── ConfigError                invalid settings (exit 2)
    ├── DataError                  input data unusable: missing column, bad date,
    │                              no customers left after cleaning (exit 3)
    ├── FederationError            a federated run failed or was refused (exit 4)
    ├── AccessDenied               the access policy or the data-flow gate refused a
    │                              request; carries the decision's reason (exit 5)
    ├── AuditError                 the audit log refused an input or an operation:
    │   │                          an event field that is not a pseudonymous id or
    │   │                          count, a missing or unsafe key file (exit 6)
    │   └── AuditIntegrityError    verification failed: stored events, a signed tree
    │                              head or a proof do not check out (exit 7)
    ├── StorageError               the database is unreachable or its schema is not
    │                              at the version this siloguard expects (exit 8)
    ├── PrivacyBudgetError         a store's privacy-budget ledger is corrupt or a
    │                              round would exceed its cap (exit 9)
    └── ComplianceError            a GDPR/CCPA rule failed where it must hold: a training
                                   run refused before round 1; names the rule and the fix (exit 10)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccessDenied",
    "AuditError",
    "AuditIntegrityError",
    "ComplianceError",
    "ConfigError",
    "DataError",
    "FederationError",
    "IncidentError",
    "PrivacyBudgetError",
    "SiloguardError",
    "StorageError",
]


class SiloguardError(Exception):
    """Base class of every error siloguard raises on purpose."""

    exit_code: int = 1


class ConfigError(SiloguardError):
    """A setting is invalid; the message names the setting and the allowed values."""

    exit_code = 2


class DataError(SiloguardError):
    """Input data cannot be used; the message names the file and the problem."""

    exit_code = 3


class FederationError(SiloguardError):
    """A federated run failed, or was refused before it started."""

    exit_code = 4


class AuditError(SiloguardError):
    """The audit log refused an input or an operation; nothing was written."""

    exit_code = 6


class AuditIntegrityError(AuditError):
    """The audit log, a signed tree head or a proof failed verification (fail closed).

    ``problems`` lists every finding when a whole log was verified (the message sums them up).
    """

    exit_code = 7

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class StorageError(SiloguardError):
    """The database cannot be used: unreachable, or its schema is not at the expected version."""

    exit_code = 8


class AccessDenied(SiloguardError):
    """A request was refused by the access policy or the data-flow gate.

    The message is the decision's reason (role, action, category, purpose, store: never a
    principal's or data subject's id); ``decision`` is the full decision, when there is one.
    """

    exit_code = 5

    def __init__(self, reason: str, *, decision: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decision = decision


class PrivacyBudgetError(SiloguardError):
    """A privacy-budget ledger entry is invalid, or a round would exceed a store's cap."""

    exit_code = 9


class ComplianceError(SiloguardError):
    """An error-severity compliance rule failed where it must hold (the training pre-flight).

    The message names the rule, its legal source, what failed and the fix; ``rules`` lists
    the ids of every failed rule.
    """

    exit_code = 10

    def __init__(self, message: str, rules: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.rules = tuple(rules)


class IncidentError(SiloguardError):
    """A wrong incident-register command: an unknown id, a bad value, a step out of order."""

    exit_code = 2
