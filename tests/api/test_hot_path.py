"""What the API's fast paths must still guarantee: a submission and its audit events are one
commit, and a database connection dropped under the API costs one call, not the service."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from siloguard.api.app import API_CONNECTIONS
from siloguard.audit import AuditLog
from siloguard.errors import AuditError
from siloguard.storage import also_hold, create_engine, exclusive
from siloguard.storage.orm import AuditEventRow, dsr_outbox, dsr_requests, dsr_transitions
from tests.api.conftest import Api
from tests.dsr.helpers import OTHER, SUBJECT


def _rows(api: Api) -> tuple[int, int, int]:
    with api.engine.connect() as conn:
        return (conn.execute(sa.select(sa.func.count()).select_from(dsr_requests)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(dsr_outbox)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(AuditEventRow)).scalar_one())


def test_a_submission_is_written_with_its_audit_events_or_not_at_all(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _rows(api)

    def refuse(self: AuditLog, conn: sa.Connection, batch: list) -> list[int]:
        raise AuditError("the audit log's Merkle node store lacks a node")

    monkeypatch.setattr(AuditLog, "_write", refuse)
    reply = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": SUBJECT})
    assert reply.status_code == 503, reply.text
    assert "nothing was done" in reply.json()["error"]["message"]
    assert "Merkle" not in reply.text  # the reason is for the operators' log
    # No request, no code in the outbox, no audit event: before, the request and its code were
    # committed first and the events appended after, so a refused append left a request that
    # the audit trail did not show.
    assert _rows(api) == before

    monkeypatch.undo()
    request = api.submit("access", OTHER)
    with api.engine.connect() as conn:
        ids = set(conn.execute(sa.select(dsr_transitions.c.event_id).where(dsr_transitions.c.request_id == request["id"])).scalars())
        logged = set(conn.execute(sa.select(AuditEventRow.event_id).where(AuditEventRow.event_id.in_(ids))).scalars())
    assert len(ids) == 2 and logged == ids  # received and verifying, both in the log at once


def test_append_in_refuses_a_transaction_on_another_database(tmp_path) -> None:  # noqa: ANN001
    from siloguard.audit import AuditEvent
    from siloguard.storage import upgrade_database

    one, two = create_engine(f"sqlite:///{tmp_path / 'one.db'}"), create_engine(f"sqlite:///{tmp_path / 'two.db'}")
    for engine in (one, two):
        upgrade_database(engine)
    log = AuditLog(one)
    event = AuditEvent(actor="system", action="dsr.transition", resource="dsr:access", purpose="essential.legal_obligation",
                       decision="info", reason="received")
    with pytest.raises(AuditError, match="own database"), exclusive(two, "dsr") as conn:
        log.append_in(conn, [event])
    with exclusive(one, "dsr") as conn:
        also_hold(conn, "audit")  # SQLite: nothing to take, the transaction holds the write lock
        assert log.append_in(conn, [event]) == [0]
    assert log.size() == 1
    one.dispose()
    two.dispose()


@pytest.mark.skipif(not os.environ.get("SILOGUARD_TEST_DATABASE_URL"), reason="needs PostgreSQL (SILOGUARD_TEST_DATABASE_URL)")
def test_a_connection_the_server_dropped_fails_one_call_with_503_and_the_next_succeeds(tmp_path) -> None:  # noqa: ANN001
    from tests.api.conftest import build_api
    from tests.storage.databases import fresh_database

    with fresh_database("postgresql", tmp_path) as url:
        api = build_api(tmp_path, url)
        a = next(api)
        try:
            _, token = a.verified("consent", SUBJECT, consent=[{"purpose": "personalize.profiling", "action": "grant"}])
            headers = a.auth(token)
            assert a.client.get("/v1/consent", headers=headers).status_code == 200
            admin = sa.create_engine(os.environ["SILOGUARD_TEST_DATABASE_URL"])
            with admin.connect() as conn:  # every connection the API holds (as a server restart would)
                dropped = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                               "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                                       {"name": API_CONNECTIONS}).scalar_one()
            admin.dispose()
            assert dropped >= 1
            lost = a.client.get("/v1/consent", headers=headers)
            assert lost.status_code == 503, lost.text
            assert lost.headers["retry-after"] == "1"
            assert lost.json()["error"]["message"] == "the database connection was lost; retry"
            again = a.client.get("/v1/consent", headers=headers)
            assert again.status_code == 200, again.text
            assert again.json() == a.client.get("/v1/consent", headers=headers).json()
        finally:
            api.close()
