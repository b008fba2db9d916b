"""Errors of the data-subject request service, each with the HTTP status the API answers.

They are :class:`~siloguard.errors.SiloguardError`s, so the CLI prints them as one line too.
Messages never hold a customer id, an e-mail address or a code.
"""

from __future__ import annotations

from siloguard.errors import SiloguardError

__all__ = ["DsrConflict", "DsrError", "DsrInvalid", "DsrNotFound", "DsrUnauthorized"]


class DsrError(SiloguardError):
    """Base: ``status`` is the HTTP status, ``code`` the stable error code of the JSON body."""

    exit_code = 2
    status = 400
    code = "bad_request"


class DsrInvalid(DsrError):
    status = 422
    code = "invalid"


class DsrNotFound(DsrError):
    status = 404
    code = "not_found"


class DsrConflict(DsrError):
    status = 409
    code = "conflict"


class DsrUnauthorized(DsrError):
    status = 401
    code = "unauthenticated"
