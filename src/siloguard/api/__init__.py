"""The privacy API: ``create_app(settings)`` (FastAPI), served by ``siloguard serve``.

Modules: :mod:`~siloguard.api.app` (routes), :mod:`~siloguard.api.auth` (API keys, subject
tokens, Casbin authorization), :mod:`~siloguard.api.keys` (key records),
:mod:`~siloguard.api.errors` (one JSON error shape), :mod:`~siloguard.api.protect` (size and
rate limits, access log), :mod:`~siloguard.api.schemas` (bodies), :mod:`~siloguard.api.cli`.
The requests themselves live in :mod:`siloguard.dsr`. See docs/API.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app"]

if TYPE_CHECKING:
    from siloguard.api.app import create_app


def __getattr__(name: str) -> Any:
    # FastAPI is imported only when the API is used, not by every `siloguard` command.
    if name == "create_app":
        from siloguard.api.app import create_app

        return create_app
    raise AttributeError(name)
