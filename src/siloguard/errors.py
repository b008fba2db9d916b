"""Errors a siloguard user can see.

Every error says what was wrong and what to do about it, in one line, and never
carries personal data (no customer ids, names, emails, or raw cell values).

    SiloguardError                 base; ``exit_code`` is what the CLI exits with
    ├── ConfigError                invalid settings (exit 2)
    ├── DataError                  input data unusable: missing column, bad date,
    │                              no customers left after cleaning (exit 3)
    └── FederationError            a federated run failed or was refused (exit 4)
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "FederationError", "SiloguardError"]


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
