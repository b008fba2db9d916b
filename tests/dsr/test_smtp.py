"""Verification codes by SMTP, against a real SMTP server on loopback (aiosmtpd) started here."""

from __future__ import annotations

import re
import socket
from email import message_from_bytes, policy
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from typer.testing import CliRunner

from siloguard.cli import app as cli_app
from siloguard.config import NotifySettings
from siloguard.dsr.notifier import deliver_outbox, read_outbox
from siloguard.errors import ConfigError
from tests.api.conftest import Api, build_api
from tests.dsr.helpers import OTHER, SUBJECT
from tests.storage.databases import fresh_database


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802  aiosmtpd's handler name
        text = message_from_bytes(envelope.content, policy=policy.default).get_content()
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), text))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()  # returns once the server answers
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with fresh_database("sqlite", tmp_path) as url:
        yield from build_api(tmp_path, url)


def _contacts(tmp_path: Path) -> Path:
    path = tmp_path / "contacts.csv"
    path.write_text(f"customer_ref,email\n{SUBJECT},subject@example.org\n")
    return path


def test_codes_go_to_the_address_on_the_stores_list_and_leave_the_outbox(api: Api, smtp, tmp_path: Path) -> None:
    inbox, port = smtp
    mine = api.submit("access", SUBJECT, contact="typed-by-requester@example.net")
    other = api.submit("access", OTHER)  # not on the contact list
    cfg = NotifySettings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none", sender="privacy@stores.example",
                         contacts=_contacts(tmp_path))
    done = deliver_outbox(api.engine, cfg)
    assert (done.sent, done.no_address, done.failed) == (1, 1, 0)
    ((sender, recipients, content),) = inbox.messages
    assert sender == "privacy@stores.example" and recipients == ["subject@example.org"]  # never the typed address
    code = re.search(r"is ([0-9]{8})\.", content)
    assert code is not None and mine["id"] in content
    assert [m["request_id"] for m in read_outbox(api.engine)] == [other["id"]]  # the undelivered one waits
    verified = api.client.post(f"/v1/requests/{mine['id']}/verify", json={"code": code.group(1)})
    assert verified.status_code == 200  # the mailed code works


def test_starttls_required_but_not_offered_sends_nothing(api: Api, smtp, tmp_path: Path) -> None:
    inbox, port = smtp
    api.submit("access", SUBJECT)
    cfg = NotifySettings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="starttls", contacts=_contacts(tmp_path))
    done = deliver_outbox(api.engine, cfg)
    assert done.sent == 0 and done.failed == 1 and inbox.messages == []  # fail closed: no code in clear
    assert len(read_outbox(api.engine)) == 1


def test_an_unreachable_server_leaves_the_messages_and_expired_ones_are_dropped(api: Api, tmp_path: Path) -> None:
    api.submit("access", SUBJECT)
    cfg = NotifySettings(smtp_host="127.0.0.1", smtp_port=_free_port(), smtp_tls="none", contacts=_contacts(tmp_path), timeout_seconds=2)
    assert deliver_outbox(api.engine, cfg).failed == 1 and len(read_outbox(api.engine)) == 1
    later = datetime.now(timezone.utc) + timedelta(days=1)  # past every code's expiry
    assert deliver_outbox(api.engine, cfg, now=later).expired == 1 and read_outbox(api.engine) == []
    with pytest.raises(ConfigError, match="notify.smtp_host"):
        deliver_outbox(api.engine, NotifySettings())
    bad = tmp_path / "bad.csv"
    bad.write_text("id,mail\n1,a@b.c\n")
    api.submit("access", OTHER)
    with pytest.raises(ConfigError, match="customer_ref,email"):
        deliver_outbox(api.engine, NotifySettings(smtp_host="127.0.0.1", smtp_port=_free_port(), contacts=bad))


def test_the_outbox_commands_show_and_deliver(api: Api, smtp, tmp_path: Path) -> None:
    inbox, port = smtp
    request = api.submit("access", SUBJECT)
    runner = CliRunner()
    env = {"SILOGUARD_DATABASE__URL": api.env.url}
    shown = runner.invoke(cli_app, ["outbox", "show", "--request", request["id"]], env=env)
    assert shown.exit_code == 0 and request["id"] in shown.stdout and re.search(r"is [0-9]{8}\.", shown.stdout)
    env |= {"SILOGUARD_NOTIFY__SMTP_HOST": "127.0.0.1", "SILOGUARD_NOTIFY__SMTP_PORT": str(port),
            "SILOGUARD_NOTIFY__SMTP_TLS": "none", "SILOGUARD_NOTIFY__CONTACTS": str(_contacts(tmp_path))}
    sent = runner.invoke(cli_app, ["outbox", "deliver"], env=env)
    assert sent.exit_code == 0 and sent.stdout.startswith("1 sent, 0 without an address") and len(inbox.messages) == 1
    assert runner.invoke(cli_app, ["outbox", "show"], env=env).stdout.strip() == "the outbox is empty"
    unconfigured = runner.invoke(cli_app, ["outbox", "deliver"], env={"SILOGUARD_DATABASE__URL": api.env.url})
    assert unconfigured.exit_code == 2 and "notify.smtp_host" in unconfigured.output


def test_review_a_failed_message_never_makes_the_others_go_twice(api: Api, smtp, tmp_path: Path, monkeypatch) -> None:
    """Review finding: an exception other than SMTPException left every sent message in the outbox (sent again each sweep)."""
    import smtplib

    inbox, port = smtp
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"customer_ref,email\n{SUBJECT},subject@example.org\n{OTHER},other@example.org\n")
    api.submit("access", SUBJECT)
    api.submit("access", OTHER)
    cfg = NotifySettings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none", contacts=contacts)
    real, calls = smtplib.SMTP.send_message, []

    def flaky(self, mail, *args, **kwargs):
        calls.append(mail["To"])
        if len(calls) == 2:
            raise ValueError("a bad header")
        return real(self, mail, *args, **kwargs)

    monkeypatch.setattr(smtplib.SMTP, "send_message", flaky)
    first = deliver_outbox(api.engine, cfg)
    monkeypatch.undo()
    assert (first.sent, first.failed) == (1, 1)
    second = deliver_outbox(api.engine, cfg)
    assert (second.sent, second.failed) == (1, 0)
    assert sorted(r for _, rcpts, _ in inbox.messages for r in rcpts) == ["other@example.org", "subject@example.org"]  # once each
    assert read_outbox(api.engine) == []


def test_review_contact_lists_and_clear_text_settings_are_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from siloguard.dsr.notifier import load_contacts

    listed = tmp_path / "list.csv"
    listed.write_text(f"customer_ref,email\n{SUBJECT},\"a@x.org, b@evil.example\"\n")
    with pytest.raises(ConfigError, match="list.csv:2: email must be one plain address"):
        load_contacts(listed)
    with pytest.raises(ValidationError, match="only for a server on loopback"):
        NotifySettings(smtp_host="mail.example.com", smtp_tls="none")
    with pytest.raises(ValidationError, match="password in clear"):
        NotifySettings(smtp_host="127.0.0.1", smtp_tls="none", smtp_user="me")


def test_review_two_workers_sweeping_at_once_send_each_message_once(api: Api, smtp, tmp_path: Path) -> None:
    """With several API workers each sweeping the outbox, a message is claimed (deleted) before it is sent."""
    from concurrent.futures import ThreadPoolExecutor

    inbox, port = smtp
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"customer_ref,email\n{SUBJECT},subject@example.org\n{OTHER},other@example.org\n")
    for ref in (SUBJECT, OTHER, SUBJECT):
        api.submit("access", ref)
    cfg = NotifySettings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none", contacts=contacts)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: deliver_outbox(api.engine, cfg), range(4)))
    assert sum(r.sent for r in results) == 3 and len(inbox.messages) == 3  # no message twice
    assert read_outbox(api.engine) == []
