"""``siloguard serve`` and ``siloguard keys create|list|revoke``.

Mounted by :func:`siloguard.cli._mount_subcommands`. A key is printed once, at creation; the
database keeps only its hash. Creating a ``store_operator`` key also registers that store's
receipt public key (derived from the store's keys under ``keys.root``), which the API checks
erasure receipts against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from siloguard.config import Settings
from siloguard.storage.cli import DbOpt, command_group, one_line_errors

__all__ = ["keys_app", "outbox_app", "serve"]

keys_app = command_group("keys", "API keys for staff and services: create (shown once), list, revoke.")


def _settings(db: str | None, run: Path | None = None, **api: object) -> Settings:
    base = Settings.build()
    if run is not None:
        from siloguard.runs import privacy_settings

        base = privacy_settings(run, base)
    return base.with_overrides(database={"url": db}, api={k: v for k, v in api.items() if v is not None})


RunOpt = Annotated[Optional[Path], typer.Option(
    "--run", help="A run laid out on one machine (e.g. runs/demo): the service's own database and keys in RUN/privacy/, "
    "the stores from RUN/coordinator/run.json. \\[default: the environment's settings]")]


@one_line_errors
def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on. \\[default: api.host]")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port. \\[default: api.port]")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, max=64,
        help="Server processes; above 1 the rate limits must be shared (api.rate_storage=redis://...). \\[default: api.workers]")] = None,
    db: DbOpt = None,
    run: RunOpt = None,
) -> None:
    """Run the privacy API (uvicorn); refuses a database that is not migrated (with --run, migrates its own)."""
    import json
    import os

    import uvicorn

    from siloguard.api.app import create_app
    from siloguard.api.server import SETTINGS_ENV, quiet_logs, uvicorn_options

    settings = _settings(db, run, host=host, port=port, workers=workers)
    if settings.notify.smtp_host and settings.notify.contacts:  # a bad contact list is said now, not every sweep
        from siloguard.dsr.notifier import load_contacts

        load_contacts(settings.notify.contacts)
    if run is not None:
        _migrate(settings)
    if not (settings.work_dir / "run.json").is_file():
        typer.echo(f"warning: no run at {settings.work_dir} (no run.json): requests wait until the stores are known; "
                   "pass --run RUN or set SILOGUARD_WORK_DIR to the coordinator's directory", err=True)
    options = uvicorn_options(settings)  # proxy headers, JSON protocol errors, header limits
    n = settings.api.workers
    if n > 1 and settings.api.rate_storage == "memory://":
        from siloguard.errors import ConfigError

        raise ConfigError(f"--workers {n} with api.rate_storage memory:// would allow {n} times every rate limit: "
                          "set SILOGUARD_API__RATE_STORAGE=redis://127.0.0.1:6379/0 (a Redis every worker reaches)")
    # Checks the schema and the rate-limit storage first: a clear error, not a half-started server.
    app = create_app(settings)
    quiet_logs()
    typer.echo(f"siloguard API on http://{settings.api.host}:{settings.api.port}: privacy centre at /, docs at /docs"
               + (f", {n} workers" if n > 1 else ""), err=True)
    if n == 1:
        uvicorn.run(app, **options)
        return
    app.state.service.audit.close()  # the check's app is not served: each worker builds its own
    handed = json.loads(settings.model_dump_json())
    if settings.notify.smtp_password is not None:  # pydantic masks secrets when dumping: the workers need it
        handed["notify"]["smtp_password"] = settings.notify.smtp_password.get_secret_value()
    os.environ[SETTINGS_ENV] = json.dumps(handed)
    uvicorn.run("siloguard.api.server:worker_app", factory=True, workers=n, **options)


@keys_app.command("create")
@one_line_errors
def create(
    role: Annotated[str, typer.Option("--role", help="store_operator, store_trainer, compliance_officer, dpo or api_service.")],
    store: Annotated[Optional[str], typer.Option("--store", help="The store a store key belongs to.")] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="A note for you (not personal data).")] = None,
    rotate_receipt_key: Annotated[bool, typer.Option(
        "--rotate-receipt-key", help="store_operator: replace the store's registered receipt key (its keys changed)."
    )] = False,
    receipt_key: Annotated[Optional[str], typer.Option(
        "--receipt-key", help="store_operator: the store's public receipt key, as `siloguard store receipt-key --site DIR` prints it on the store's machine."
    )] = None,
    db: DbOpt = None,
    run: RunOpt = None,
) -> None:
    """Create a key and print it once; only its hash is kept.

    A store_operator key also registers the store's receipt key: the public key the store
    gives (``--receipt-key``, printed by ``siloguard store receipt-key`` on the store's machine).
    Without it, on one machine only, it is derived from the store's keys under keys.root if
    they are there; no keys are ever created here.
    """
    from siloguard.api.keys import create_key
    from siloguard.errors import ConfigError
    from siloguard.storage.db import create_engine, require_current_schema

    settings = _settings(db, run)
    if run is not None:
        _migrate(settings)
    if store is not None:
        _check_store(settings, store)
    engine = create_engine(settings.database.url)
    try:
        require_current_schema(engine)
        if rotate_receipt_key and role != "store_operator":
            raise ConfigError("--rotate-receipt-key goes with --role store_operator --store STORE")
        if receipt_key is not None and role != "store_operator":
            raise ConfigError("--receipt-key goes with --role store_operator --store STORE")
        if role == "store_operator" and store is not None:
            from siloguard.dsr.receipts import register_store_key

            register_store_key(engine, store, _receipt_key(receipt_key, settings, store), replace=rotate_receipt_key)
        key, text = create_key(engine, role, store=store, label=label)
    finally:
        engine.dispose()
    typer.echo(text)
    typer.echo(f"key {key.id}: role {key.role}, store {key.store or '*'}. Shown once: store it now.", err=True)


def _migrate(settings: Settings) -> None:
    """The service's own database of a one-machine run: created or migrated on first use."""
    from siloguard.storage.db import create_engine, upgrade_database

    engine = create_engine(settings.database.url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()


def _check_store(settings: Settings, store: str) -> None:
    """A store id as stores name themselves (`siloguard store init`), and one of the run's when the run is known."""
    import re

    from siloguard.errors import ConfigError
    from siloguard.runs import RunManifest

    if not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", store):
        raise ConfigError(f"--store {store!r}: a store's name is lowercase letters, digits and '-', starting with a letter")
    if (settings.work_dir / RunManifest.FILE).is_file():
        names = RunManifest.read(settings.work_dir).names
        if store not in names:
            raise ConfigError(f"--store {store!r} is not a store of the run in {settings.work_dir} ({', '.join(names)})")


def _receipt_key(text: str | None, settings: Settings, store: str) -> bytes:
    import base64
    import binascii

    from siloguard.errors import ConfigError

    if text is not None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError("--receipt-key is not a store's receipt key: pass what `siloguard store receipt-key --site DIR` prints")
        return raw
    # One machine only (an older layout): the store's keys happen to be under this keys.root.
    from siloguard.dsr.receipts import public_key_bytes
    from siloguard.privacy.keys import existing_store_keys

    try:
        return public_key_bytes(existing_store_keys(settings.keys.root, store))
    except ConfigError:
        raise ConfigError(
            f"no keys of store {store!r} under {Path(settings.keys.root).resolve()} (nothing was created): pass --receipt-key, "
            f"from `siloguard store receipt-key --site DIR` on the store's machine"
        ) from None


@keys_app.command("list")
@one_line_errors
def list_(db: DbOpt = None, run: RunOpt = None) -> None:
    """List keys (ids, roles, stores, state); never the secrets."""
    from siloguard.api.keys import list_keys
    from siloguard.storage.db import create_engine

    engine = create_engine(_settings(db, run).database.url)
    try:
        for key in list_keys(engine):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            typer.echo(f"{key.id}  {key.role:<18} {key.store or '*':<20} {state}  {key.label or ''}".rstrip())
    finally:
        engine.dispose()


@keys_app.command("revoke")
@one_line_errors
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (from `siloguard keys list`).")], db: DbOpt = None,
           run: RunOpt = None) -> None:
    """Revoke a key at once."""
    from siloguard.api.keys import revoke_key
    from siloguard.errors import ConfigError
    from siloguard.storage.db import create_engine

    engine = create_engine(_settings(db, run).database.url)
    try:
        if not revoke_key(engine, key_id):
            raise ConfigError(f"no active key {key_id!r}: see `siloguard keys list`")
    finally:
        engine.dispose()
    typer.echo(f"key {key_id} revoked")


outbox_app = command_group(
    "outbox", "Messages to data subjects (verification codes) waiting in the privacy service's outbox: show (development), deliver (SMTP).")


@outbox_app.command("show")
@one_line_errors
def outbox_show(
    request: Annotated[Optional[str], typer.Option("--request", help="Only this request's messages.")] = None,
    db: DbOpt = None,
    run: RunOpt = None,
) -> None:
    """Print the queued messages, codes included: for development and demos, where no mail server delivers them.

    In production the messages go out by SMTP (notify.smtp_host) and this shows only those waiting
    (no address on the contact list, or the server unreachable)."""
    from siloguard.dsr.notifier import read_outbox
    from siloguard.storage.db import create_engine, require_current_schema

    settings = _settings(db, run)
    engine = create_engine(settings.database.url)
    try:
        require_current_schema(engine)
        messages = read_outbox(engine, request)
    finally:
        engine.dispose()
    if not messages:
        typer.echo("the outbox is empty" + (f" for request {request}" if request else ""))
        return
    for m in messages:
        typer.echo(f"{m['created_at']:%Y-%m-%d %H:%M:%S}  {m['request_id']}  to {m['destination']}  (expires {m['expires_at']:%H:%M:%S})")
        typer.echo(f"    {m['body']}")
    typer.echo(f"{len(messages)} message(s); deliver them with siloguard outbox deliver (SMTP: notify.smtp_host)", err=True)


@outbox_app.command("deliver")
@one_line_errors
def outbox_deliver(db: DbOpt = None, run: RunOpt = None) -> None:
    """Send the queued messages by SMTP now (siloguard serve does it on every sweep)."""
    from siloguard.dsr.notifier import deliver_outbox
    from siloguard.storage.db import create_engine, require_current_schema

    settings = _settings(db, run)
    engine = create_engine(settings.database.url)
    try:
        require_current_schema(engine)
        done = deliver_outbox(engine, settings.notify)
    finally:
        engine.dispose()
    typer.echo(f"{done.sent} sent, {done.no_address} without an address on the contact list, {done.failed} failed, "
               f"{done.expired} expired (deleted)")
    if done.failed:
        raise typer.Exit(1)
