"""How one-time codes reach a data subject: a pluggable :class:`Notifier`, and SMTP delivery.

The default, :class:`OutboxNotifier`, writes the message to the ``dsr_outbox`` table in the
same transaction that creates the code, so a code exists only if its message does (a
transactional outbox). :func:`deliver_outbox` then sends the queued messages by SMTP
(``notify.smtp_host``; the API does it on every sweep, ``siloguard outbox deliver`` by hand),
after the transaction committed: a message is never sent for a code that was rolled back.
Delivered or expired rows are removed. The outbox holds the code in clear because delivering
it is its only job; nothing else does (the request stores a keyed hash of it).

The service keeps no e-mail address of its own: a message is addressed to
``customer-ref:<number>``, and the address comes from the stores' contact list
(``notify.contacts``, CSV ``customer_ref,email``). A customer without one keeps the message
in the outbox, never sends it to an address the requester typed.
"""

from __future__ import annotations

import csv
import logging
import re
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from siloguard.config import NotifySettings
from siloguard.errors import ConfigError
from siloguard.storage.orm import dsr_outbox

__all__ = ["Delivery", "Notifier", "OutboxNotifier", "deliver_outbox", "load_contacts", "purge_outbox", "read_outbox"]

log = logging.getLogger(__name__)
_ONE_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}")


@runtime_checkable
class Notifier(Protocol):
    """Delivers a message to a subject; ``conn`` is the transaction creating the code."""

    def send(self, conn: Connection, *, request_id: str, destination: str, body: str, now: datetime, expires_at: datetime) -> None: ...


class OutboxNotifier:
    """Queues messages in ``dsr_outbox`` for the operator to deliver."""

    def send(self, conn: Connection, *, request_id: str, destination: str, body: str, now: datetime, expires_at: datetime) -> None:
        conn.execute(
            dsr_outbox.insert(),
            {"request_id": request_id, "destination": destination, "body": body, "created_at": now, "expires_at": expires_at},
        )


def read_outbox(engine: Engine, request_id: str | None = None) -> list[dict[str, Any]]:
    """Queued messages, oldest first (optionally of one request)."""
    query = sa.select(dsr_outbox).order_by(dsr_outbox.c.id)
    if request_id is not None:
        query = query.where(dsr_outbox.c.request_id == request_id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def purge_outbox(engine: Engine, *, ids: list[int] | None = None, expired_before: datetime | None = None) -> int:
    """Delete delivered messages (``ids``) and those expired before a time; returns the count."""
    conds = []
    if ids:
        conds.append(dsr_outbox.c.id.in_(ids))
    if expired_before is not None:
        conds.append(dsr_outbox.c.expires_at < expired_before)
    if not conds:
        return 0
    with engine.begin() as conn:
        return conn.execute(dsr_outbox.delete().where(sa.or_(*conds))).rowcount or 0


def load_contacts(path: Path) -> dict[str, str]:
    """``customer_ref -> email`` from the stores' contact list (CSV with those two columns)."""
    from siloguard.dsr.common import normalise_ref

    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"customer_ref", "email"} <= set(reader.fieldnames):
                raise ConfigError(f"{path}: the contact list needs the columns customer_ref,email")
            contacts: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                address = (row.get("email") or "").strip()
                if not address:
                    continue
                if not _ONE_ADDRESS.fullmatch(address):  # one plain address: no list, no header, no display name
                    raise ConfigError(f"{path}:{line}: email must be one plain address (name@domain), nothing else")
                contacts[normalise_ref(row["customer_ref"])] = address
            return contacts
    except OSError as exc:
        raise ConfigError(f"notify.contacts {path}: cannot read ({exc.strerror}); give the stores' contact list (CSV customer_ref,email)") from None


@dataclass(frozen=True)
class Delivery:
    """What one delivery pass did (counts only: the log and the CLI print these)."""

    sent: int = 0
    no_address: int = 0
    failed: int = 0
    expired: int = 0


def _connect(cfg: NotifySettings) -> smtplib.SMTP:
    context = ssl.create_default_context(cafile=str(cfg.smtp_ca_file) if cfg.smtp_ca_file else None)
    assert cfg.smtp_host is not None
    if cfg.smtp_tls == "ssl":
        server: smtplib.SMTP = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds, context=context)
    else:
        server = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout_seconds)
        if cfg.smtp_tls == "starttls":
            server.ehlo()
            if not server.has_extn("starttls"):  # fail closed: never send a code in clear when TLS was asked for
                server.quit()
                raise smtplib.SMTPNotSupportedError(f"{cfg.smtp_host}:{cfg.smtp_port} does not offer STARTTLS")
            server.starttls(context=context)
    if cfg.smtp_user:
        server.login(cfg.smtp_user, cfg.smtp_password.get_secret_value() if cfg.smtp_password else "")
    return server


def _put_back(engine: Engine, message: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(dsr_outbox.insert(), {k: message[k] for k in ("id", "request_id", "destination", "body", "created_at", "expires_at")})


def deliver_outbox(engine: Engine, cfg: NotifySettings, *, now: datetime | None = None) -> Delivery:
    """Send every queued, unexpired message by SMTP to the address on the contact list; delete
    what was sent and what expired. A message without an address, or whose sending failed,
    stays for the next pass (until it expires)."""
    if not cfg.smtp_host:
        raise ConfigError("no SMTP server: set notify.smtp_host (SILOGUARD_NOTIFY__SMTP_HOST) to deliver the outbox")
    now = now or datetime.now(timezone.utc)
    expired = purge_outbox(engine, expired_before=now)
    contacts = load_contacts(cfg.contacts) if cfg.contacts else {}
    queued = read_outbox(engine)
    addressed = []
    for message in queued:
        destination = str(message["destination"])
        address = contacts.get(destination.removeprefix("customer-ref:")) if destination.startswith("customer-ref:") else None
        if address:
            addressed.append((message, address))
    no_address = len(queued) - len(addressed)
    if not addressed:  # nothing to send: no connection
        return Delivery(no_address=no_address, expired=expired)
    try:
        server = _connect(cfg)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("outbox: cannot reach the SMTP server (%s); %d message(s) wait", type(exc).__name__, len(addressed))
        return Delivery(no_address=no_address, failed=len(addressed), expired=expired)
    sent = failed = 0
    try:
        for message, address in addressed:
            mail = EmailMessage()
            mail["From"], mail["To"] = cfg.sender, address
            mail["Subject"] = "Your privacy request: verification code"
            mail.set_content(str(message["body"]) + "\n\nIf you did not make this request, ignore this message.\n")
            # Claimed by deleting it first: with several API workers sweeping, only the one whose
            # delete took the row sends it (never twice); a failed send puts it back.
            if not purge_outbox(engine, ids=[int(message["id"])]):
                continue
            try:
                server.send_message(mail)
            except Exception as exc:  # noqa: BLE001  one message's failure must not resend or block the others
                _put_back(engine, message)
                failed += 1
                log.warning("outbox: a message could not be sent (%s)", type(exc).__name__)
                if isinstance(exc, (OSError, smtplib.SMTPServerDisconnected)):  # the connection is gone: the rest wait
                    failed += len(addressed) - sent - failed
                    break
                continue
            sent += 1
    finally:
        try:
            server.quit()
        except Exception:  # noqa: BLE001  the connection may already be gone
            pass
    result = Delivery(sent=sent, no_address=no_address, failed=failed, expired=expired)
    log.info("outbox: %d sent, %d without an address, %d failed, %d expired", result.sent, result.no_address, result.failed, result.expired)
    return result
