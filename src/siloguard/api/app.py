"""The privacy API: ``create_app(settings)`` builds it, ``siloguard serve`` runs it (uvicorn).

Routes live in :mod:`siloguard.api.routes` (one router per resource, with the shared
dependencies of :mod:`siloguard.api.deps`) and are versioned under ``/v1``; OpenAPI at ``/openapi.json``, docs at ``/docs``. Each
call gets its own database connections (SQLAlchemy, per request; writes in serialised
transactions, see :mod:`siloguard.dsr.service`); the app refuses to start on a database that
is not at this siloguard's schema (run ``siloguard db upgrade``).

A background thread carries verified requests forward every ``api.resume_every_seconds``,
and once at start-up, so work interrupted by a crash or a SIGKILL is finished after a
restart.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.routing import APIRoute

from siloguard.api.auth import Authorizer
from siloguard.api.errors import ERROR_RESPONSES, ApiError, install_error_handlers
from siloguard.api.protect import Protect, rate_storage, storage_reachable
from siloguard.config import Settings
from siloguard.dsr.service import DsrService
from siloguard.storage.db import create_engine, head_revision, require_current_schema

__all__ = ["API_CONNECTIONS", "create_app"]

#: How the API's database connections are named on PostgreSQL (``pg_stat_activity``).
API_CONNECTIONS = "siloguard-api"


log = logging.getLogger(__name__)

_QUERY_NAMES: dict[int, frozenset[str]] = {}  # by id(route): routes live as long as the process


def _query_names(route: APIRoute) -> frozenset[str]:
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        names = _QUERY_NAMES[id(route)] = frozenset(p.alias for p in get_flat_dependant(route.dependant).query_params)
    return names


async def _known_query_only(request: Request) -> None:
    """Refuse query parameters an operation does not take (strict input; nothing ignored silently).

    ``async``: it blocks on nothing, and a plain ``def`` would cost a thread hop per request."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:  # pages (/, /docs): a shared link may carry ?utm_...
        return
    allowed = _query_names(route)
    if set(request.query_params) - allowed:
        takes = ", ".join(sorted(allowed)) or "none"
        raise ApiError(422, "invalid", f"unknown query parameter(s); this operation takes: {takes}")




class _Resumer:
    """Carries pending requests forward in the background (and at start-up)."""

    def __init__(self, service: DsrService, every: float) -> None:
        self.service, self.every = service, every
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start sweeping (again after a stop: an ASGI server may run the lifespan more than once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="dsr-resume", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self, stop: threading.Event) -> None:
        from siloguard.storage import Leader

        notify = self.service.settings.notify
        # Every API worker starts a resumer; one of them sweeps at a time (the others take over
        # when it is gone): two sweeps at once did the same work twice.
        leader = Leader(self.service.engine, "dsr-sweep")
        try:
            while not stop.is_set():
                self.turn(leader, notify)
                stop.wait(self.every)
        finally:
            leader.release()

    def turn(self, leader, notify) -> bool:  # noqa: ANN001 - Leader, NotifySettings
        """Sweep if this worker leads; whether it did."""
        try:
            leading = leader.acquire()
        except Exception as exc:  # noqa: BLE001  the database is away: ask again next turn
            log.warning("request sweep: cannot reach the database (%s); retrying", type(exc).__name__)
            return False
        if leading:
            self._sweep(notify)
        return leading

    def _sweep(self, notify) -> None:  # noqa: ANN001 - NotifySettings
        """One turn: carry pending requests forward, then send the codes waiting in the outbox."""
        try:
            self.service.resume()
        except Exception as exc:  # noqa: BLE001  the sweep retries on its next turn
            log.warning("request sweep failed (%s); retrying", type(exc).__name__)
        if notify.smtp_host:  # codes committed since the last sweep go out now
            from siloguard.dsr.notifier import deliver_outbox

            from siloguard.errors import ConfigError

            try:
                deliver_outbox(self.service.engine, notify)
            except ConfigError as exc:  # a setting (its message names the file or setting, never a person)
                log.warning("outbox delivery: %s", exc)
            except Exception as exc:  # noqa: BLE001  the messages wait for the next sweep
                log.warning("outbox delivery failed (%s); retrying", type(exc).__name__)


def create_app(settings: Settings, *, service: DsrService | None = None) -> FastAPI:
    """The API for ``settings``; raises StorageError if the database is not migrated."""
    from siloguard.audit import AuditLog
    from siloguard.policies.enforcer import PolicyEnforcer

    engine = create_engine(settings.database.url, pre_ping=False, application_name=API_CONNECTIONS, **api_pool(settings))
    require_current_schema(engine)
    storage = rate_storage(settings.api.rate_storage, key_prefix=settings.api.rate_key_prefix)
    if not storage_reachable(settings.api.rate_storage):
        from siloguard.errors import ConfigError

        raise ConfigError(f"cannot reach the rate-limit storage api.rate_storage={_shown(settings.api.rate_storage)}: "
                          "start it (e.g. Redis on 127.0.0.1:6379) or set api.rate_storage=memory:// for one process")
    if service is None:
        service = DsrService(settings, engine, AuditLog.open(settings))
    authz = Authorizer(engine, service, PolicyEnforcer())
    resumer = _Resumer(service, settings.api.resume_every_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Iterator[None]:  # type: ignore[misc]
        # What is loaded by now (pandas, SQLAlchemy, the policy, ~160k objects) lives as long as
        # the process: out of the collector's sight, a full collection no longer walks it (about
        # 90 ms a time, which showed as stalls in the API's latency tail; the gc module's own
        # advice for long-lived servers).
        gc.collect()
        gc.freeze()
        resumer.start()
        try:
            yield
        finally:
            resumer.stop()

    app = FastAPI(
        title="siloguard privacy API",
        version="1",
        description="Data-subject requests (GDPR/CCPA) with legal clocks, erasure across stores, consent and GPC.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(_known_query_only)],
        docs_url=None,  # served offline by siloguard.api.routes.centre
        redoc_url=None,
    )
    app.state.service = service
    app.state.authz = authz
    install_error_handlers(app)
    app.add_middleware(
        Protect,
        max_body_bytes=settings.api.max_body_bytes,
        max_answer_bytes=settings.api.max_answer_bytes,
        rate_per_key=settings.api.rate_per_key,
        rate_per_ip=settings.api.rate_per_ip,
        max_headers=settings.api.max_headers,
        max_header_bytes=settings.api.max_header_bytes,
        storage=storage,
    )

    app.state.revision = head_revision()  # checked above; reading the migration scripts again per call is slow
    from siloguard.api.routes import centre, consent, health, requests, stores

    for module in (health, requests, stores, consent):
        app.include_router(module.router)
    centre.install(app)
    return app


def _shown(uri: str) -> str:
    """A storage URI without its password."""
    return re.sub(r"//[^@/]*@", "//***@", uri)


def api_pool(settings: Settings) -> dict[str, int]:
    """Connection-pool sizes of the API's engine on PostgreSQL.

    Sync routes run in AnyIO's thread pool (40 threads per worker): with SQLAlchemy's default
    5 + 10 connections a burst waits for a connection, and a connection opened past the pool
    (overflow) is closed again when returned, costing a new PostgreSQL backend each time. A
    pool of ``api.db_pool`` kept open serves the threads; SQLite ignores it (one file).
    """
    if not settings.database.url.startswith("postgresql"):
        return {}
    return {"pool_size": settings.api.db_pool, "max_overflow": settings.api.db_pool // 2}


def service_ref(customer_ref: str) -> str:
    """Kept for importers of the old location: :func:`siloguard.api.deps.service_ref`."""
    from siloguard.api.deps import service_ref as ref

    return ref(customer_ref)
