"""What the API's fast paths must still guarantee: a submission and its audit events are one
commit, and a database connection dropped under the API costs one call, not the service."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from siloguard.api.app import API_CONNECTIONS
from siloguard.audit import AuditLog
from siloguard.errors import AuditError, StorageError
from siloguard.storage import also_hold, create_engine, exclusive
from siloguard.storage.orm import AuditEventRow, dsr_outbox, dsr_requests, dsr_transitions
from tests.api.conftest import Api
from tests.dsr.helpers import OTHER, SUBJECT


def _rows(api: Api) -> tuple[int, int, int]:
    with api.engine.connect() as conn:
        return (conn.execute(sa.select(sa.func.count()).select_from(dsr_requests)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(dsr_outbox)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(AuditEventRow)).scalar_one())


def test_a_submission_and_its_audit_events_are_one_commit_and_a_refusing_log_does_not_turn_it_away(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    request = api.submit("access", OTHER)
    ids = _event_ids(api, request["id"])
    assert len(ids) == 2 and _logged(api, ids) == ids  # received and verifying, in the log at once

    def refuse(self: AuditLog, conn: sa.Connection, batch: list) -> list[int]:
        raise AuditError("the audit log's Merkle node store lacks a node")

    monkeypatch.setattr(AuditLog, "_write", refuse)
    with caplog.at_level("ERROR"):
        reply = api.client.post("/v1/requests", json={"kind": "access", "customer_ref": SUBJECT})
    # The subject's request is kept (as every other DSR step is) and its events wait for the log.
    assert reply.status_code == 201, reply.text
    waiting = _event_ids(api, reply.json()["request"]["id"])
    assert len(waiting) == 2 and _logged(api, waiting) == set()
    assert any("refused the events of new requests" in r.getMessage() for r in caplog.records)
    assert not any(SUBJECT in r.getMessage() for r in caplog.records)

    monkeypatch.undo()
    assert api.app_service().flush_audit() == 2  # what the next sweep does
    assert _logged(api, waiting) == waiting


def _event_ids(api: Api, request_id: str) -> set[str]:
    with api.engine.connect() as conn:
        return set(conn.execute(sa.select(dsr_transitions.c.event_id).where(dsr_transitions.c.request_id == request_id)).scalars())


def _logged(api: Api, ids: set[str]) -> set[str]:
    with api.engine.connect() as conn:
        return set(conn.execute(sa.select(AuditEventRow.event_id).where(AuditEventRow.event_id.in_(ids))).scalars())


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
    with pytest.raises(StorageError, match="exclusive"), one.begin() as conn:  # a deferred SQLite transaction
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


def _new_requests(service, n: int) -> list:  # noqa: ANN001
    from siloguard.dsr import clocks

    from datetime import timedelta

    now = service.clock()
    later = now + timedelta(hours=1)  # not expired: the app's sweep purges expired codes and messages
    out = []
    for i in range(n):
        row = service._new_row("access", "gdpr", clocks.clock_for("gdpr", "access", now), now, digest=service.digest(f"9{i}"),
                               customer_ref=f"9{i}", contact=None, idempotency_key=None, gpc=False, payload={"consent": []})
        out.append(service._new_request(row, "verifying", actor="data-subject", reason="code-sent", now=now,
                                        verification={"request_id": row["id"], "code_hash": b"h" * 32, "expires_at": later,
                                                      "attempts": 0, "max_attempts": 5},
                                        message={"request_id": row["id"], "destination": "customer-ref:x", "body": "code",
                                                 "now": now, "expires_at": later}))
    return out


def test_a_batch_of_new_requests_is_one_insert_per_table_and_a_failing_one_rolls_back_alone(api: Api) -> None:
    # (and a request whose notifier sends at once is written on its own: its code goes out once)
    from dataclasses import replace

    from sqlalchemy.exc import IntegrityError

    from siloguard.dsr.service import _GroupWriter

    service = api.app_service()
    inserts: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO DSR_REQUESTS"):
            inserts.append(statement)

    sa.event.listen(service.engine, "before_cursor_execute", count)
    try:
        news = _new_requests(service, 4)
        events: list = []
        with exclusive(service.engine, "test-batch") as conn:
            assert _GroupWriter._write(conn, news, events) == [None] * 4
        assert len(inserts) == 1 and len(events) == 8  # one INSERT for the four requests

        inserts.clear()
        fresh = _new_requests(service, 3)
        clash = replace(fresh[1], request={**fresh[1].request, "id": news[0].request["id"]})  # an id already stored
        jobs = [fresh[0], clash, fresh[2]]
        events = []
        with exclusive(service.engine, "test-batch") as conn:
            outcomes = _GroupWriter._write(conn, jobs, events)
        assert outcomes[0] is None and outcomes[2] is None and isinstance(outcomes[1], IntegrityError)
        assert len(events) == 4  # the two that went in

        sends: list[str] = []
        direct = [replace(n, outbox=None, notify=lambda conn, i=n.request["id"]: sends.append(i)) for n in _new_requests(service, 2)]
        more = _new_requests(service, 2)
        jobs = [direct[0], more[0], replace(more[1], request={**more[1].request, "id": news[1].request["id"]}), direct[1]]
        with exclusive(service.engine, "test-batch") as conn:
            outcomes = _GroupWriter._write(conn, jobs, [])
        assert [o is None for o in outcomes] == [True, True, False, True]
        assert sorted(sends) == sorted(n.request["id"] for n in direct)  # each code once, despite the retry
    finally:
        sa.event.remove(service.engine, "before_cursor_execute", count)
    with api.engine.connect() as conn:
        stored = set(conn.execute(sa.select(dsr_requests.c.id)).scalars())
        messages = conn.execute(sa.select(sa.func.count()).select_from(dsr_outbox)).scalar_one()
    ids = {n.request["id"] for n in news} | {fresh[0].request["id"], fresh[2].request["id"]}
    assert ids <= stored and fresh[1].request["id"] not in stored
    assert messages == 7  # 4 + 2 + 1: the direct notifier's two went elsewhere


def test_another_notifier_still_gets_each_code_inside_the_requests_transaction(tmp_path) -> None:  # noqa: ANN001
    from siloguard.dsr.service import DsrService
    from tests.dsr.helpers import make_env

    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'n.db'}")
    sent: list[tuple[str, bool]] = []

    class Recorder:
        def send(self, conn, *, request_id, destination, body, now, expires_at) -> None:  # noqa: ANN001
            stored = conn.execute(sa.select(dsr_requests.c.status).where(dsr_requests.c.id == request_id)).scalar_one()
            sent.append((request_id, conn.in_transaction() and stored == "verifying" and "is " in body))

    engine = create_engine(env.url)
    audit = AuditLog.open(env.settings)
    try:
        service = DsrService(env.settings, engine, audit, notifier=Recorder())
        row, created = service.submit(kind="access", customer_ref=SUBJECT)
        assert created and row["status"] == "verifying"
        assert sent == [(row["id"], True)]
        with engine.connect() as conn:  # nothing went to the outbox: the notifier took it
            assert conn.execute(sa.select(sa.func.count()).select_from(dsr_outbox)).scalar_one() == 0
    finally:
        audit.close()
        engine.dispose()


def test_when_the_audit_log_refuses_then_another_notifier_still_sends_each_code_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    from siloguard.dsr.service import DsrService
    from tests.dsr.helpers import make_env

    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'n.db'}")
    sent: list[str] = []

    class Recorder:
        def send(self, conn, *, request_id, destination, body, now, expires_at) -> None:  # noqa: ANN001
            sent.append(request_id)

    def refuse(self: AuditLog, conn: sa.Connection, batch: list) -> list[int]:
        raise AuditError("the audit log's Merkle node store lacks a node")

    engine = create_engine(env.url)
    audit = AuditLog.open(env.settings)
    try:
        service = DsrService(env.settings, engine, audit, notifier=Recorder())
        monkeypatch.setattr(AuditLog, "_write", refuse)
        row, created = service.submit(kind="access", customer_ref=SUBJECT)
        assert created and row["status"] == "verifying"
        assert sent == [row["id"]]  # once: not again when the batch is written without the log
        monkeypatch.undo()
        assert service.flush_audit() == 2  # its events, appended by the next sweep
    finally:
        audit.close()
        engine.dispose()


def test_when_two_api_workers_run_their_resumers_then_one_sweeps_at_a_time(tmp_path) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from siloguard.api.app import _Resumer
    from siloguard.storage import Leader

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    engines = [create_engine(url), create_engine(url)]
    swept: list[int] = []
    notify = SimpleNamespace(smtp_host=None)
    workers = [
        _Resumer(SimpleNamespace(resume=lambda i=i: swept.append(i), engine=e, settings=SimpleNamespace(notify=notify)), 1.0)
        for i, e in enumerate(engines)
    ]
    leaders = [Leader(e, "dsr-sweep") for e in engines]
    try:
        assert workers[0].turn(leaders[0], notify) and not workers[1].turn(leaders[1], notify)
        assert workers[0].turn(leaders[0], notify)
        assert swept == [0, 0]
        leaders[0].release()  # the first worker stopped
        assert workers[1].turn(leaders[1], notify) and swept == [0, 0, 1]
    finally:
        for leader in leaders:
            leader.release()
        for engine in engines:
            engine.dispose()
