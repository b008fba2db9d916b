"""JSON errors with one stable shape: ``{"error": {"status", "code", "message"}}``.

Every error the API returns, from validation, authentication, authorization, limits or the
service, has this body, and :data:`ERROR_RESPONSES` documents it on every operation so the
OpenAPI schema tells clients (and schemathesis) exactly what can come back. Messages never
echo request values (they may be personal data); a validation error names the field only.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from siloguard.dsr.errors import DsrError
from siloguard.errors import AccessDenied, AuditError, ConfigError, SiloguardError, StorageError

__all__ = ["ERROR_RESPONSES", "ApiError", "ErrorBody", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing, unknown or expired credentials",
    403: "Authenticated, but the access policy does not allow this",
    404: "No such resource (or not yours)",
    409: "The request is not in a state that allows this",
    413: "Request body too large",
    415: "Body is not JSON",
    422: "The body or parameters are invalid",
    429: "Rate limit exceeded",
    431: "Too many request headers, or too large (api.max_headers, api.max_header_bytes)",
    503: "The database (or the audit trail) is unavailable",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _DESCRIPTIONS.items()
}

_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
          431: "headers_too_large"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(DsrError)
    async def _dsr(_: Request, exc: DsrError) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc))

    @app.exception_handler(AccessDenied)
    async def _denied(_: Request, exc: AccessDenied) -> JSONResponse:
        return error_response(403, "forbidden", str(exc))

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        log.error("database error: %s", exc)
        return error_response(503, "unavailable", "the database is unavailable; retry later", {"retry-after": "1"})

    @app.exception_handler(AuditError)
    async def _audit(_: Request, exc: AuditError) -> JSONResponse:
        # The reason is for the operators' log, not the caller. What the call changed before
        # the audit log refused may be kept (its events are appended by the next sweep), so the
        # caller is told to look before trying again.
        log.error("audit log refused a write: %s", exc)
        return error_response(503, "unavailable", "the audit trail could not be written; check the request's "
                              "status before you try again")

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            # The server dropped a pooled connection (restart, fail-over): the API's engine does
            # not ping before each use (siloguard.storage.db.create_engine), so this request
            # failed and SQLAlchemy renews the pool; the next one gets a fresh connection.
            log.warning("database connection lost; the pool is renewed")
            return error_response(503, "unavailable", "the database connection was lost; retry", {"retry-after": "1"})
        log.error("unexpected database error in the API: %s", type(exc).__name__)
        return error_response(500, "internal", "internal error; the request was not completed")

    @app.exception_handler(ConfigError)
    async def _config(_: Request, exc: ConfigError) -> JSONResponse:
        return error_response(422, "invalid", str(exc))

    @app.exception_handler(SiloguardError)
    async def _siloguard(_: Request, exc: SiloguardError) -> JSONResponse:
        return error_response(409, "conflict", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        extra = sorted({str(err["loc"][-1]) for err in exc.errors() if err.get("type") == "extra_forbidden" and err.get("loc")})
        if extra:
            return error_response(422, "invalid", f"field(s) this operation does not take: {', '.join(extra)}; "
                                  "see the OpenAPI schema at /openapi.json")
        fields = sorted({".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body" for err in exc.errors()})
        return error_response(422, "invalid", f"invalid or missing field(s): {', '.join(fields)}; see the OpenAPI schema at /openapi.json")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in the API: %s", type(exc).__name__)
        return error_response(500, "internal", "internal error; the request was not completed")
