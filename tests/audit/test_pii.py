"""PII canaries: personal data offered to the audit log is refused and shows up nowhere.

Every canary is tried in every text field of an event, bare and behind an id prefix. Then
a log written alongside those attempts is searched, as raw database bytes and through every
CLI output (verify, prove, export, report), for each canary: none may appear, nor in the
error messages or the captured logs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from siloguard.audit import AuditEvent, GroupCommitSink, InMemoryAuditSink
from siloguard.audit.cli import audit_app
from siloguard.audit.log import AuditLog
from siloguard.errors import AuditError
from siloguard.storage import create_engine, upgrade_database
from tests.audit.helpers import gate_event

CANARIES = {
    "email": "jane.doe@example.com",
    "name": "Jane Doe",
    "phone": "+44 20 7946 0958",
    "phone-digits": "07946095800",
    "card": "4111 1111 1111 1111",
    "card-digits": "4111111111111111",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "iban-compact-lowercase": "gb82west12345698765432",
    "iban-de-lowercase": "de89370400440532013000",  # all hex characters: not a pseudonym
    "digits-as-pseudonym": "v1.12345678901234567890123456789012",
    "ipv4": "203.0.113.7",
    "customer-id": "17850",
    "birth-date": "1985-02-17",
    "street-address": "221B Baker Street",
    "postcode": "SW1A 1AA",
}
TEXT_FIELDS = ("actor", "action", "resource", "purpose", "reason", "store", "request")


def _attempts(canary: str) -> list[dict[str, object]]:
    base = gate_event(0)
    out: list[dict[str, object]] = []
    for field in TEXT_FIELDS:
        for value in (canary, f"customer:{canary}", f"subject:{canary.lower()}", f"silo:france/{canary.lower()}"):
            out.append({field: value})
    out.append({"counts": {canary: 1}})
    out.append({"counts": {**base.counts, canary.lower(): 1}})
    out.append({"counts": {**base.counts, f"n_{canary.lower()}": 1}})
    return out


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_when_an_event_carries_personal_data_then_it_is_refused_without_echoing_it(name: str) -> None:
    canary = CANARIES[name]
    base = gate_event(0)
    fields = {f: getattr(base, f) for f in ("actor", "action", "resource", "purpose", "decision", "reason", "counts",
                                            "round", "store", "request")}
    for change in _attempts(canary):
        with pytest.raises(AuditError) as info:
            AuditEvent(**{**fields, **change})  # type: ignore[arg-type]
        message = str(info.value) + repr(info.value)
        assert canary not in message and canary.lower() not in message, change


def test_personal_data_offered_to_the_log_appears_in_no_stored_byte_and_no_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'audit.db'}"
    key, pub = tmp_path / "audit.key", tmp_path / "audit.pub"
    assert runner.invoke(audit_app, ["keygen", "--signing-key", str(key), "--public-key", str(pub)]).exit_code == 0
    engine = create_engine(db)
    upgrade_database(engine)
    log = AuditLog(engine)
    sink, fake = GroupCommitSink(log), InMemoryAuditSink()
    base = gate_event(0)
    fields = {f: getattr(base, f) for f in ("actor", "action", "resource", "purpose", "decision", "reason", "counts",
                                            "round", "store", "request")}
    refused = 0
    kept: list[str] = []
    for i, canary in enumerate(CANARIES.values()):
        kept.append(sink.record(gate_event(i)))  # the legitimate events around the attempts
        fake.record(gate_event(100 + i))
        for change in _attempts(canary):
            try:
                sink.record(AuditEvent(**{**fields, **change}))  # type: ignore[arg-type]
            except AuditError:
                refused += 1
    engine.dispose()
    assert refused == len(CANARIES) * len(_attempts("x")) and len(kept) == len(CANARIES) == len(fake)

    outputs = []
    outputs.append(runner.invoke(audit_app, ["head", "--db", db, "--signing-key", str(key)]).output)
    outputs.append(runner.invoke(audit_app, ["verify", "--db", db, "--public-key", str(pub)]).output)
    outputs.append(runner.invoke(audit_app, ["prove", kept[3], "--db", db, "--public-key", str(pub)]).output)
    assert runner.invoke(audit_app, ["export", "--db", db, "--out", str(tmp_path / "export")]).exit_code == 0
    assert runner.invoke(audit_app, ["report", "--db", db, "--out", str(tmp_path / "report"),
                                     "--public-key", str(pub)]).exit_code == 0
    assert json.loads(outputs[2])["leaf_index"] == 3

    blobs = {
        "database": b"".join(p.read_bytes() for p in tmp_path.glob("audit.db*")),
        "export": (tmp_path / "export" / "events.jsonl").read_bytes(),
        "report.html": (tmp_path / "report" / "report.html").read_bytes(),
        "report.json": (tmp_path / "report" / "report.json").read_bytes(),
        "cli output": "".join(outputs).encode(),
        "logs": caplog.text.encode(),
    }
    assert len(blobs["export"].splitlines()) == len(CANARIES)
    for where, blob in blobs.items():
        for name, canary in CANARIES.items():
            for form in {canary, canary.lower(), canary.replace(" ", ""), canary.lower().replace(" ", "")}:
                assert form.encode() not in blob, f"{name} canary found in {where}"
