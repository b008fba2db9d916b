"""`siloguard audit ...` through typer's CliRunner on audit_app."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from siloguard.audit.cli import audit_app
from siloguard.audit.heads import SignedTreeHead, load_public_key
from siloguard.audit.log import AuditLog, InclusionProof
from siloguard.audit.merkle import leaf_hash, mth
from siloguard.audit.report import report_schema
from siloguard.storage import create_engine, upgrade_database
from tests.audit.helpers import gate_event


@dataclass
class Env:
    db: str
    key: Path
    pub: Path
    dir: Path

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(audit_app, list(args))

    def keyed(self, *args: str) -> list[str]:
        return [*args, "--db", self.db]


def _one_error_line(result: Result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.rstrip("\n").splitlines()
    assert lines[-1].startswith("error: ") and all(n in lines[-1] for n in needles), result.stderr
    assert all(line.startswith("  - ") for line in lines[:-1])


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> Env:
    engine = create_engine(database_url)
    upgrade_database(engine)
    engine.dispose()
    return Env(database_url, tmp_path / "keys" / "audit.key", tmp_path / "keys" / "audit.pub", tmp_path)


def _record(env: Env, n: int, start: int = 0) -> list[str]:
    engine = create_engine(env.db)
    try:
        events = [gate_event(i) for i in range(start, start + n)]
        AuditLog(engine).append(events)
        return [e.event_id for e in events]
    finally:
        engine.dispose()


def test_officer_workflow_keygen_head_verify_prove_export_report(env: Env) -> None:
    keygen = env.run("keygen", "--signing-key", str(env.key), "--public-key", str(env.pub))
    assert keygen.exit_code == 0, keygen.output
    assert stat.S_IMODE(env.key.stat().st_mode) == 0o600
    public_key = load_public_key(env.pub)
    ids = _record(env, 30)

    saved = env.dir / "saved-head.json"
    head = env.run(*env.keyed("head", "--signing-key", str(env.key), "--out", str(saved)))
    assert head.exit_code == 0, head.output
    assert SignedTreeHead.read(saved) == SignedTreeHead.from_json(json.loads(head.stdout))
    SignedTreeHead.read(saved).verify(public_key)
    _record(env, 5, start=30)

    verify = env.run(*env.keyed("verify", "--public-key", str(env.pub), "--against", str(saved)))
    assert verify.exit_code == 0, verify.output
    assert verify.stdout.startswith("OK: 35 events, root ")
    assert "consistent with the saved tree head #0 (size 30)" in verify.stdout
    assert "the newest 5 event(s) are not under a signed head yet" in verify.stdout

    prove = env.run(*env.keyed("prove", ids[12], "--public-key", str(env.pub)))
    assert prove.exit_code == 0, prove.output
    proof = InclusionProof.from_json(json.loads(prove.stdout))
    proof.verify(public_key, ids[12])
    assert proof.leaf_index == 12 and proof.tree_size == 30

    out = env.dir / "export"
    export = env.run(*env.keyed("export", "--out", str(out)))
    assert export.exit_code == 0, export.output
    lines = (out / "events.jsonl").read_bytes().splitlines()
    exported_head = SignedTreeHead.read(out / "tree-head.json")
    exported_head.verify(public_key)  # checkable without siloguard's database:
    assert len(lines) == exported_head.tree_size == 30
    assert mth([leaf_hash(line) for line in lines]) == exported_head.root_hash

    report_dir = env.dir / "report"
    report = env.run(*env.keyed("report", "--out", str(report_dir), "--public-key", str(env.pub), "--against", str(saved)))
    assert report.exit_code == 0, report.output
    facts = json.loads((report_dir / "report.json").read_text())
    jsonschema.validate(facts, report_schema())
    assert facts["tree_head"]["tree_size"] == 30 and facts["log"]["events_after_head"] == 5
    assert exported_head.root_hash.hex() in (report_dir / "report.html").read_text()


def test_verify_of_a_tampered_log_lists_the_problems_and_exits_7(env: Env) -> None:
    env.run("keygen", "--signing-key", str(env.key), "--public-key", str(env.pub))
    _record(env, 10)
    env.run(*env.keyed("head", "--signing-key", str(env.key)))
    engine = create_engine(env.db)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET body = :b WHERE seq = 3"), {"b": gate_event(99).canonical()})
    engine.dispose()
    result = env.run(*env.keyed("verify", "--public-key", str(env.pub)))
    _one_error_line(result, 7, "audit log failed verification")
    assert "event #3: its stored leaf hash does not match its bytes" in result.stderr
    assert result.stdout == ""


def test_refused_inputs_print_one_line_and_write_nothing(env: Env) -> None:
    assert env.run("keygen", "--signing-key", str(env.key), "--public-key", str(env.pub)).exit_code == 0
    first_key = env.key.read_bytes()
    _one_error_line(env.run("keygen", "--signing-key", str(env.key), "--public-key", str(env.pub)), 6, "already exists")
    assert env.key.read_bytes() == first_key

    ids = _record(env, 4)
    pub = ["--public-key", str(env.pub)]
    _one_error_line(env.run(*env.keyed("prove", ids[0], *pub)), 6, "no signed tree head yet")
    _one_error_line(env.run(*env.keyed("export", "--out", str(env.dir / "x"))), 6, "no signed tree head yet")
    assert not (env.dir / "x").exists()
    _one_error_line(env.run(*env.keyed("head", "--signing-key", str(env.dir / "nokey"))), 6, "siloguard audit keygen")
    assert env.run(*env.keyed("head", "--signing-key", str(env.key))).exit_code == 0
    _one_error_line(env.run(*env.keyed("prove", "0190-not-an-id", *pub)), 6, "no event 0190-not-an-id")
    _one_error_line(env.run(*env.keyed("verify", "--public-key", str(env.dir / "none.pub"))), 6, "siloguard audit keygen")
    garbage = env.dir / "garbage.json"
    garbage.write_text("[1, 2, 3]")
    _one_error_line(env.run(*env.keyed("verify", *pub, "--against", str(garbage))), 6, "not a siloguard tree head")
    occupied = env.dir / "occupied"
    occupied.write_text("keep me")
    _one_error_line(env.run(*env.keyed("report", "--out", str(occupied), *pub)), 6, "not a directory")
    _one_error_line(env.run(*env.keyed("export", "--out", str(occupied))), 6, "not a directory")
    assert occupied.read_text() == "keep me"
    bad_url = env.run("verify", "--db", "mysql://u@h/db", *pub)
    _one_error_line(bad_url, 2, "database.url")
    fresh = f"sqlite:///{env.dir / 'never-migrated.db'}"
    _one_error_line(env.run("verify", "--db", fresh, *pub), 8, "siloguard db upgrade")


def _wipe(env: Env, *tables: str) -> None:
    engine = create_engine(env.db)
    with engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f"DELETE FROM {table}"))
    engine.dispose()


def test_finding_11_when_the_log_is_wiped_then_verify_fails(env: Env) -> None:
    """Security finding: a wiped log (events, nodes and heads deleted) passed as "OK: 0 events"."""
    env.run("keygen", "--signing-key", str(env.key), "--public-key", str(env.pub))
    _record(env, 10)
    assert env.run(*env.keyed("head", "--signing-key", str(env.key))).exit_code == 0
    _wipe(env, "audit_events", "audit_nodes", "audit_heads")
    result = env.run(*env.keyed("verify", "--public-key", str(env.pub)))
    _one_error_line(result, 7, "holds no events", "brand-new deployment", "--allow-empty")
    assert result.stdout == ""


def test_when_allow_empty_then_an_empty_log_passes(env: Env) -> None:
    env.run("keygen", "--signing-key", str(env.key), "--public-key", str(env.pub))
    pub = ["--public-key", str(env.pub)]
    _one_error_line(env.run(*env.keyed("verify", *pub)), 7, "holds no events", "--allow-empty")  # brand-new, not allowed
    result = env.run(*env.keyed("verify", *pub, "--allow-empty"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: the audit log is empty")

    # events gone but their signed heads left: fails, --allow-empty or not
    _record(env, 4)
    assert env.run(*env.keyed("head", "--signing-key", str(env.key))).exit_code == 0
    _wipe(env, "audit_events", "audit_nodes")
    wiped = env.run(*env.keyed("verify", *pub, "--allow-empty"))
    _one_error_line(wiped, 7, "audit log failed verification")
    assert "tree head #0 covers 4 events but the log holds 0: events deleted" in wiped.stderr
