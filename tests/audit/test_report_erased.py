"""Erased data subjects in the officer's report (issue 19).

A subject appears in audit events only as a blinded reference ``subject:b.<hex>``, keyed by
that subject's own data key. Erasure destroys the key: the events (and so the Merkle tree
and the signed heads) stay byte for byte the same, no key left can link the reference to
anyone, and the report shows the subject's decisions under ``erased-subject``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
from typer.testing import CliRunner

from siloguard.audit.cli import audit_app
from siloguard.audit.events import AuditEvent
from siloguard.audit.log import AuditLog
from siloguard.audit.report import ERASED_SUBJECT, build_report, report_schema, write_report
from siloguard.privacy.keys import FileKeyStore, StoreKeys, SubjectVault, subject_resolver
from siloguard.privacy.pseudonyms import Pseudonymiser
from siloguard.storage import create_engine
from tests.audit.helpers import Keys, gate_event, make_keys

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=timezone.utc)
PURPOSE = "essential.legal_obligation"
ERASED, KEPT = "17850", "13047"  # Online Retail customer ids: never in an event
STORE = "france"
BLINDED = re.compile(r"b\.[0-9a-f]{32}")


def _store_keys(root: Path, store: str = STORE) -> StoreKeys:
    root.mkdir(mode=0o700)
    os.chmod(root, 0o700)
    keys = StoreKeys(FileKeyStore(root), store)
    keys.init()
    return keys


def _subject_events(ref: str, n: int, *, store: str = STORE, start: int = 0) -> list[AuditEvent]:
    """What the gate records for a subject's own flow (an export for a legal obligation)."""
    return [
        AuditEvent(actor=f"subject:{ref}", action="gate.export", resource="dataset:transactions", purpose=PURPOSE,
                   decision="allow", reason="allowed", counts={"rows_in": 3, "rows_out": 3}, store=store,
                   time=T0 + timedelta(minutes=start + i))
        for i in range(n)
    ]


def _record(log: AuditLog, keys: StoreKeys) -> dict[str, str]:
    vault = SubjectVault(keys)
    refs = {ERASED: vault.audit_ref(ERASED), KEPT: vault.audit_ref(KEPT)}
    events = [gate_event(i) for i in range(4)]  # store principals, not subjects
    events += _subject_events(refs[ERASED], 3)
    events += _subject_events(refs[KEPT], 2, start=10)
    legacy = Pseudonymiser(keys).pseudonym(KEPT)  # a store pseudonym, as logs from before issue 19 hold
    events += [
        AuditEvent(actor=f"subject:{legacy}", action="gate.export", resource="dataset:transactions", purpose=PURPOSE,
                   decision="allow", reason="allowed", store=STORE, time=T0 + timedelta(minutes=20)),
        AuditEvent(actor="subject:unidentified", action="gate.export", resource="dataset:transactions", purpose=PURPOSE,
                   decision="deny", reason="consent-missing", store=STORE, time=T0 + timedelta(minutes=21)),
    ]
    log.append(events)
    return refs


def _rows(facts: dict) -> dict[tuple[str, str], dict]:
    return {(r["actor"], r["purpose"]): r for r in facts["gate_decisions"]["by_principal_purpose"]}


def test_erasure_keeps_the_log_verifiable_unlinkable_and_the_report_shows_an_erased_subject(
    audit_log: AuditLog, keys: Keys, tmp_path: Path
) -> None:
    store_keys = _store_keys(tmp_path / "store-keys")
    refs = _record(audit_log, store_keys)
    assert all(BLINDED.fullmatch(r) for r in refs.values()) and refs[ERASED] != refs[KEPT]
    audit_log.sign_head()
    before = audit_log.verify(keys.public_key)
    bodies_before = [s.body for s in audit_log.iter_events()]

    assert SubjectVault(store_keys).shred(ERASED)

    # (a) the log is untouched: same bytes, same root, every head still verifies
    after = audit_log.verify(keys.public_key)
    assert after.root_hash == before.root_hash and after.tree_size == before.tree_size == 11
    assert after.latest_head == before.latest_head and after.heads_checked == before.heads_checked
    assert [s.body for s in audit_log.iter_events()] == bodies_before

    # (b) nothing any key that still exists computes appears in the erased subject's events
    vault = SubjectVault(store_keys)
    resolvable = vault.audit_refs()
    assert refs[ERASED] not in resolvable and set(resolvable) == {refs[KEPT]}
    pseudonym = Pseudonymiser(store_keys).pseudonym(ERASED)
    recomputed = {*resolvable, *resolvable.values(), pseudonym, pseudonym.split(".", 1)[1], vault.subject_ref(ERASED)}
    texts = [b.decode("utf-8") for b in bodies_before]
    erased_texts = [t for t in texts if json.loads(t)["actor"] == f"subject:{refs[ERASED]}"]
    assert len(erased_texts) == 3
    assert not [(value, t) for value in recomputed for t in erased_texts if value in t]
    for value in recomputed - {refs[KEPT]}:  # the kept subject's own ref names only the kept subject's events
        assert not any(value in t for t in texts), value
    tokens = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[bv][0-9]*\.[0-9a-f]{32}")
    assert not any(ERASED in tokens.sub("", t) or KEPT in tokens.sub("", t) for t in texts)  # never a raw customer id

    # (c) with the keys: the erased subject's decisions under erased-subject, the other's under its ref
    report = build_report(audit_log, keys.public_key, subjects=resolvable.__contains__)
    facts = report.facts
    jsonschema.validate(facts, report_schema())
    rows = _rows(facts)
    assert rows[(ERASED_SUBJECT, PURPOSE)] == {"actor": "erased-subject", "purpose": PURPOSE, "allow": 3, "deny": 0}
    assert rows[(f"subject:{refs[KEPT]}", PURPOSE)]["allow"] == 2
    assert not any(refs[ERASED] in actor for actor, _ in rows)
    assert rows[("subject:unidentified", PURPOSE)]["deny"] == 1  # older forms are shown as recorded
    assert (f"subject:{Pseudonymiser(store_keys).pseudonym(KEPT)}", PURPOSE) in rows
    subjects = facts["subjects"]
    assert subjects["resolved"] is True and subjects["key_stores"] is None
    assert subjects["subject_events"] == 7 and subjects["erased_subject_events"] == 3
    assert subjects["unresolved_events"] == 0
    html = report.html
    assert 'id="erased-subject-events">3<' in html and "<code>erased-subject</code>" in html
    assert refs[ERASED] not in html and refs[ERASED] not in json.dumps(facts)

    # ... and without keys: references as recorded, and the report says it did not resolve them
    plain = build_report(audit_log, keys.public_key)
    jsonschema.validate(plain.facts, report_schema())
    rows = _rows(plain.facts)
    assert rows[(f"subject:{refs[ERASED]}", PURPOSE)]["allow"] == 3 and (ERASED_SUBJECT, PURPOSE) not in rows
    subjects = plain.facts["subjects"]
    assert subjects["resolved"] is False and subjects["erased_subject_events"] is None
    assert subjects["subject_events"] == 7 and subjects["unresolved_events"] == 5
    assert subjects["note"].startswith("subjects were not resolved: no store keys were available")
    assert 'id="subjects-unresolved"' in plain.html and "no store keys were available" in plain.html
    html_path, json_path = write_report(plain, tmp_path / "out")
    assert json.loads(json_path.read_text())["subjects"] == subjects
    assert html_path.read_text().count("No data yet") == 5  # consent, budget, requests, checks, witnessed heads


def test_subjects_of_stores_without_keys_are_not_taken_for_erased(audit_log: AuditLog, keys: Keys, tmp_path: Path) -> None:
    france = _store_keys(tmp_path / "france-keys")
    germany = _store_keys(tmp_path / "germany-keys", "germany")  # held by the German store only
    audit_log.append(_subject_events(SubjectVault(france).audit_ref(KEPT), 1)
                     + _subject_events(SubjectVault(germany).audit_ref(KEPT), 2, store="germany"))
    audit_log.sign_head()
    found = subject_resolver(tmp_path / "france-keys")
    assert found is not None
    resolver, stores = found
    assert stores == [STORE]
    facts = build_report(audit_log, keys.public_key, subjects=resolver, subject_stores=stores).facts
    subjects = facts["subjects"]
    assert subjects["key_stores"] == [STORE] and subjects["erased_subject_events"] == 0
    assert subjects["unresolved_events"] == 2 and "store(s) france" in subjects["note"]
    assert (ERASED_SUBJECT, PURPOSE) not in _rows(facts)


def test_subject_resolver_creates_no_keys(tmp_path: Path) -> None:
    assert subject_resolver(tmp_path / "absent") is None
    assert not (tmp_path / "absent").exists()
    empty = tmp_path / "empty"
    (empty / "stores" / "france").mkdir(parents=True, mode=0o700)
    os.chmod(empty, 0o700)
    assert subject_resolver(empty) is None  # a store directory without a master key is skipped
    assert list((empty / "stores" / "france").iterdir()) == []


def test_cli_report_with_keys_root_shows_the_erased_subject(tmp_path: Path, database_url: str) -> None:
    from siloguard.storage import upgrade_database

    engine = create_engine(database_url)
    try:
        upgrade_database(engine)
        store_keys = _store_keys(tmp_path / "store-keys")
        refs = _record(AuditLog(engine), store_keys)
    finally:
        engine.dispose()
    signing = make_keys(tmp_path, "officer")
    runner = CliRunner()
    db = ["--db", database_url]
    head = runner.invoke(audit_app, ["head", "--signing-key", str(signing.private_path), *db])
    assert head.exit_code == 0, head.output
    root = json.loads(head.stdout)["root_hash_hex"]

    assert SubjectVault(store_keys).shred(ERASED)

    verify = runner.invoke(audit_app, ["verify", "--public-key", str(signing.public_path), *db])
    assert verify.exit_code == 0, verify.output
    assert verify.stdout.startswith(f"OK: 11 events, root {root}")

    out = tmp_path / "report"
    args = ["report", "--out", str(out), "--public-key", str(signing.public_path), *db]
    result = runner.invoke(audit_app, [*args, "--keys-root", str(tmp_path / "store-keys")])
    assert result.exit_code == 0, result.output
    facts = json.loads((out / "report.json").read_text())
    jsonschema.validate(facts, report_schema())
    assert facts["tree_head"]["root_hash_hex"] == root
    rows = _rows(facts)
    assert rows[(ERASED_SUBJECT, PURPOSE)]["allow"] == 3
    assert rows[(f"subject:{refs[KEPT]}", PURPOSE)]["allow"] == 2
    assert facts["subjects"] == {
        "resolved": True, "key_stores": [STORE], "subject_events": 7, "erased_subject_events": 3,
        "unresolved_events": 0, "note": facts["subjects"]["note"],
    }
    assert "erased-subject" in (out / "report.html").read_text()
    assert "not resolved" not in result.stdout

    missing = tmp_path / "no-keys-here"
    unresolved = runner.invoke(audit_app, [*args, "--keys-root", str(missing)])
    assert unresolved.exit_code == 0, unresolved.output
    assert "note: subjects were not resolved" in unresolved.stdout
    assert json.loads((out / "report.json").read_text())["subjects"]["resolved"] is False
    assert not missing.exists()  # the report creates no key store


def test_cli_report_refuses_a_key_store_others_can_read(tmp_path: Path, database_url: str) -> None:
    from siloguard.storage import upgrade_database

    engine = create_engine(database_url)
    try:
        upgrade_database(engine)
        AuditLog(engine).append([gate_event(0)])
    finally:
        engine.dispose()
    signing = make_keys(tmp_path, "officer")
    runner = CliRunner()
    assert runner.invoke(audit_app, ["head", "--signing-key", str(signing.private_path), "--db", database_url]).exit_code == 0
    _store_keys(tmp_path / "store-keys")
    os.chmod(tmp_path / "store-keys", 0o755)
    result = runner.invoke(audit_app, ["report", "--out", str(tmp_path / "report"), "--public-key", str(signing.public_path),
                                       "--db", database_url, "--keys-root", str(tmp_path / "store-keys")])
    assert result.exit_code == 2 and "chmod 700" in result.stderr  # a bad setting, not an empty resolver
    assert not (tmp_path / "report").exists()
