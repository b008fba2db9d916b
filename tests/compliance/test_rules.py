"""Each rule: a passing fixture and a failing one, and the failing one's message."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from siloguard.compliance.records import Activity, Assessment
from siloguard.config import Settings
from siloguard.policies.consent import ConsentRegistry, StoreConsent
from siloguard.privacy.keys import FileKeyStore, StoreKeys
from siloguard.storage import create_engine, upgrade_database
from tests.compliance.conftest import NOW, add_activity, with_activity
from tests.storage.databases import fresh_database


def _store_consent(settings: Settings, store: str) -> StoreConsent:
    keys = StoreKeys(FileKeyStore(settings.keys.root), store)
    keys.init()
    return StoreConsent(ConsentRegistry(settings.database.url), keys)


def _customers(settings: Settings) -> dict[str, list[str]]:
    from siloguard.compliance.context import Context

    ctx = Context(settings)
    return {name: rows.customer_ids for name, rows in ctx.stores.items()}


# ---- lawful basis ----------------------------------------------------------------------


def test_lawful_basis_passes_on_the_shipped_records(run_rule) -> None:
    result = run_rule("lawful-basis")
    assert result.status == "passed"
    assert result.outcome.counts["pairs"] >= 5


def test_lawful_basis_fails_when_a_purpose_has_no_basis(run_rule, datamaps) -> None:
    tx = datamaps["transactions"]
    bases = {k: v for k, v in tx.lawful_bases.items() if k != "personalize.profiling"}
    result = run_rule("lawful-basis", datamaps={**datamaps, "transactions": replace(tx, lawful_bases=bases)})
    assert result.status == "failed" and result.is_error
    assert "dataset 'transactions' declares no lawful basis for personalize.profiling (activity train_recommender)" in result.outcome.findings


def test_lawful_basis_fails_when_the_record_states_another_basis(run_rule, records) -> None:
    result = run_rule("lawful-basis", records=with_activity(records, "rfm_reporting", lawful_basis="consent"))
    assert result.status == "failed"
    assert any("states basis consent but dataset 'transactions' declares legitimate_interests" in f for f in result.outcome.findings)


# ---- consent records ---------------------------------------------------------------------


def test_consent_records_pass_when_every_subject_of_an_ungated_flow_consented(run_rule, records, db_settings) -> None:
    ungated = with_activity(records, "train_recommender", consent_gated=False)
    for store, customers in _customers(db_settings).items():
        _store_consent(db_settings, store).record(customers, "personalize.profiling", "grant", source="store", at=NOW - timedelta(days=1))
    result = run_rule("consent-records", scope="training", records=ungated, settings=db_settings)
    assert result.status == "passed", result.outcome.findings
    assert result.outcome.counts["subjects"] == result.outcome.counts["consented"] > 0
    assert {c.store for c in result.outcome.coverage} == {"france", "germany", "united-kingdom"}


def test_consent_records_fail_when_one_subject_lacks_consent(run_rule, records, db_settings) -> None:
    ungated = with_activity(records, "train_recommender", consent_gated=False)
    customers = _customers(db_settings)
    for store, ids in customers.items():
        granted = ids[1:] if store == "germany" else ids
        _store_consent(db_settings, store).record(granted, "personalize.profiling", "grant", source="store", at=NOW - timedelta(days=1))
    result = run_rule("consent-records", scope="training", records=ungated, settings=db_settings)
    assert result.status == "failed"
    assert result.outcome.findings == [
        f"store germany: 1 of {len(customers['germany'])} subjects in the flow of activity train_recommender have "
        "no live consent for personalize.profiling on 2026-01-15 12:00 UTC"
    ]


def test_consent_records_warn_when_a_gated_flow_has_nobody(run_rule, settings) -> None:
    result = run_rule("consent-records", scope="training")
    assert result.status == "warning" and not result.is_error
    assert "no subject of store(s) france, germany, united-kingdom has a live consent" in result.outcome.findings[0]


def test_consent_withdrawn_before_the_check_counts_as_missing(run_rule, records, settings) -> None:
    ungated = with_activity(records, "train_recommender", consent_gated=False)
    for store, ids in _customers(settings).items():
        view = _store_consent(settings, store)
        view.record(ids, "personalize.profiling", "grant", source="store", at=NOW - timedelta(days=2))
        if store == "france":
            view.record(ids[:2], "personalize", "withdraw", source="api", at=NOW - timedelta(days=1))
    result = run_rule("consent-records", scope="training", records=ungated)
    assert result.status == "failed"
    assert result.outcome.findings[0].startswith("store france: 2 of ")


# ---- purpose limitation and minimisation ---------------------------------------------------


def test_purpose_limitation_passes(run_rule) -> None:
    assert run_rule("purpose-limitation").status == "passed"


def test_purpose_limitation_fails_for_an_undeclared_use(run_rule, records) -> None:
    changed = with_activity(records, "rfm_reporting", purposes=("marketing.communications.email",))
    result = run_rule("purpose-limitation", records=changed)
    assert result.status == "failed"
    assert result.outcome.findings[0].startswith(
        "activity rfm_reporting uses dataset 'transactions' for marketing.communications.email, which is not among its declared uses"
    )


def test_data_minimisation_passes(run_rule) -> None:
    assert run_rule("data-minimisation", scope="training").status == "passed"


def test_data_minimisation_fails_for_a_column_not_allowed_for_the_purpose(run_rule, records) -> None:
    act = records.activities["campaign_lists"]
    reads = {**act.datasets, "customer_profiles": act.datasets["customer_profiles"] + ("phone",)}
    result = run_rule("data-minimisation", records=with_activity(records, "campaign_lists", datasets=reads))
    assert result.status == "failed"
    assert result.outcome.findings == [
        "activity campaign_lists reads phone of 'customer_profiles', which the data map does not allow for "
        "marketing.advertising.first_party.targeted"
    ]


def test_data_minimisation_fails_when_the_record_understates_what_the_client_reads(run_rule, records) -> None:
    changed = with_activity(records, "train_recommender", datasets={"transactions": ("customer_id", "invoice", "invoice_date")})
    result = run_rule("data-minimisation", scope="training", records=changed)
    assert result.status == "failed"
    assert "the federation client reads stock_code of 'transactions', which activity train_recommender does not record" in result.outcome.findings


# ---- storage limitation --------------------------------------------------------------------


def test_storage_limitation_passes_on_the_datas_own_clock(run_rule) -> None:
    result = run_rule("storage-limitation")
    assert result.status == "passed"
    assert result.outcome.counts["rows_expired"] == 0 and result.outcome.counts["rows"] > 0


def test_storage_limitation_fails_on_todays_clock(run_rule, settings) -> None:
    now_clock = settings.with_overrides(compliance={"as_of": datetime(2026, 1, 15, tzinfo=timezone.utc)})
    result = run_rule("storage-limitation", settings=now_clock)
    assert result.status == "failed"
    assert result.outcome.counts["rows_expired"] == result.outcome.counts["rows"]
    assert any(f.startswith("store germany: ") and "older than the retention P6Y at 2026-01-15 00:00 UTC" in f for f in result.outcome.findings)


# ---- request deadlines ------------------------------------------------------------------------


def _minimal_queue(url: str, rows: list[tuple[str, str, datetime]]) -> sa.Engine:
    engine = create_engine(url)
    meta = sa.MetaData()
    table = sa.Table(
        "dsr_requests", meta,
        sa.Column("id", sa.String(40), primary_key=True), sa.Column("kind", sa.String(16)),
        sa.Column("jurisdiction", sa.String(8)), sa.Column("status", sa.String(16)),
        sa.Column("received_at", sa.DateTime(timezone=True)), sa.Column("due_at", sa.DateTime(timezone=True)),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        for rid, status, due in rows:
            conn.execute(table.insert().values(id=rid, kind="erasure", jurisdiction="gdpr", status=status,
                                               received_at=due - timedelta(days=30), due_at=due))
    return engine


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_request_deadlines_pass_when_nothing_open_is_overdue(run_rule, tmp_path: Path, backend: str) -> None:
    with fresh_database(backend, tmp_path) as url:
        engine = _minimal_queue(url, [("req-a", "completed", NOW - timedelta(days=5)), ("req-b", "verified", NOW + timedelta(days=3))])
        try:
            result = run_rule("request-deadlines", engine=engine)
        finally:
            engine.dispose()
    assert result.status == "passed"
    assert result.outcome.counts == {"requests_open": 1, "requests_overdue": 0}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_request_deadlines_fail_for_an_overdue_open_request(run_rule, tmp_path: Path, backend: str) -> None:
    with fresh_database(backend, tmp_path) as url:
        engine = _minimal_queue(url, [("req-late", "verified", NOW - timedelta(days=2)), ("req-ok", "denied", NOW - timedelta(days=9))])
        try:
            result = run_rule("request-deadlines", engine=engine)
        finally:
            engine.dispose()
    assert result.status == "failed"
    assert result.outcome.findings == [
        "1 of 1 open request(s) are past their due time on 2026-01-15 12:00 UTC (the oldest was due 2026-01-13 12:00 UTC; request req-late)"
    ]


def test_request_deadlines_not_applicable_without_a_queue(run_rule, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        result = run_rule("request-deadlines", engine=engine)
    finally:
        engine.dispose()
    assert result.status == "not_applicable" and not result.is_error
    assert "no dsr_requests table" in result.outcome.findings[0]


# ---- opt-out / GPC -----------------------------------------------------------------------------

_SHARING = Activity(
    id="partner_sharing", name="Sharing purchase data with a partner brand", purposes=("third_party_sharing",),
    datasets={"transactions": ("customer_id", "stock_code")}, sells_or_shares=True,
)


def test_opt_out_passes_when_no_activity_sells_or_shares(run_rule) -> None:
    result = run_rule("opt-out-honoured")
    assert result.status == "passed"
    assert result.outcome.findings == ["no activity sells or shares personal information"]


def test_opt_out_passes_when_nobody_in_the_sharing_flow_opted_out(run_rule, records, settings) -> None:
    for store in _customers(settings):
        _store_consent(settings, store)  # keys exist, no opt-out recorded
    result = run_rule("opt-out-honoured", records=add_activity(records, _SHARING))
    assert result.status == "passed"
    assert result.outcome.counts == {"opted_out": 0}


def test_opt_out_fails_for_a_gpc_subject_in_a_sharing_flow(run_rule, records, db_settings) -> None:
    customers = _customers(db_settings)
    for store in customers:
        _store_consent(db_settings, store)
    _store_consent(db_settings, "france").record_gpc(customers["france"][0], at=NOW - timedelta(hours=1))
    result = run_rule("opt-out-honoured", records=add_activity(records, _SHARING), settings=db_settings)
    assert result.status == "failed"
    assert result.outcome.findings == [
        "store france: 1 subject(s) who opted out of sale/sharing are in the flow of activity partner_sharing"
    ]


# ---- sensitive data ------------------------------------------------------------------------------

_HEALTH = Activity(
    id="wellness_offers", name="Wellness offers", purposes=("marketing.advertising.first_party.targeted",),
    datasets={}, lawful_basis="consent", data_categories=("user.health_and_medical",),
)


def test_sensitive_data_passes_with_an_art9_condition_and_limit_use(run_rule, records) -> None:
    ok = replace(_HEALTH, art9_basis="9(2)(a)", honours_limit_use=True)
    result = run_rule("sensitive-data", records=add_activity(records, ok))
    assert result.status == "passed"
    assert result.outcome.counts == {"activities": 1}


def test_sensitive_data_fails_without_an_art9_condition(run_rule, records) -> None:
    result = run_rule("sensitive-data", records=add_activity(records, replace(_HEALTH, honours_limit_use=True)))
    assert result.status == "failed"
    assert result.outcome.findings[0].startswith(
        "activity wellness_offers reads special-category data (user.health_and_medical) without an Art. 9(2) condition"
    )


def test_sensitive_data_fails_when_limit_use_is_not_honoured(run_rule, records) -> None:
    result = run_rule("sensitive-data", records=add_activity(records, replace(_HEALTH, art9_basis="9(2)(a)")))
    assert result.status == "failed"
    assert "does not honour limit-use requests" in result.outcome.findings[0]


# ---- cross-border transfers ---------------------------------------------------------------------


def test_transfers_pass_inside_the_eea_and_adequate_countries(run_rule) -> None:
    result = run_rule("cross-border-transfers", scope="training")
    assert result.status == "passed"
    assert result.outcome.counts == {"stores": 3, "stores_needing_mechanism": 0}


def test_transfers_fail_for_a_coordinator_in_a_non_adequate_country(run_rule, records) -> None:
    result = run_rule("cross-border-transfers", scope="training", records=replace(records, coordinator_country="US"))
    assert result.status == "failed"
    assert "store germany sends updates to a coordinator in US (no adequacy decision) and has no transfer mechanism on record" in result.outcome.findings


def test_transfers_need_a_mechanism_for_a_store_with_non_adequate_data(run_rule, settings, tmp_path: Path) -> None:
    import pandas as pd

    raw = pd.read_csv(settings.data.path, dtype=str)
    raw.loc[raw["Country"] == "France", "Country"] = "RSA"  # France's customers become South African
    path = tmp_path / "moved.csv"
    raw.to_csv(path, index=False)
    moved = settings.with_overrides(data={"path": path})
    result = run_rule("cross-border-transfers", settings=moved)
    assert result.status == "failed"
    assert result.outcome.findings == [
        "store rsa holds data of ZA (no adequacy decision) and has no transfer mechanism on record"
    ]


# ---- records of processing, DPIA ------------------------------------------------------------------


def test_records_of_processing_pass(run_rule) -> None:
    assert run_rule("records-of-processing").status == "passed"


def test_records_of_processing_fail_for_a_missing_field(run_rule, records) -> None:
    result = run_rule("records-of-processing", records=with_activity(records, "rfm_reporting", security=(), recipients=()))
    assert result.status == "failed"
    assert result.outcome.findings == ["activity rfm_reporting lacks Art. 30(1) (d) recipients; (g) security measures"]


def test_dpia_passes_with_approved_assessments(run_rule) -> None:
    result = run_rule("dpia-approved")
    assert result.status == "passed"
    assert result.outcome.counts == {"dpia_required": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "draft", "approved_on": None}, "DPIA dpia-2024-001 of activity train_recommender is draft, not approved"),
        ({"approved_on": date(2026, 3, 1)}, "DPIA dpia-2024-001 of activity train_recommender is approved only from 2026-03-01"),
        ({"activity": "campaign_lists"}, "DPIA dpia-2024-001 assesses activity campaign_lists, not train_recommender"),
    ],
)
def test_dpia_fails_unless_approved_for_the_activity_before_training(run_rule, records, change, message) -> None:
    assessments = dict(records.assessments)
    assessments["dpia-2024-001"] = replace(assessments["dpia-2024-001"], **change)
    result = run_rule("dpia-approved", scope="training", records=replace(records, assessments=assessments))
    assert result.status == "failed"
    assert result.outcome.findings == [message]


def test_dpia_fails_when_large_scale_profiling_names_none(run_rule, records) -> None:
    result = run_rule("dpia-approved", records=with_activity(records, "campaign_lists", dpia=None))
    assert result.outcome.findings == ["activity campaign_lists (large-scale profiling) names no DPIA"]
    assert isinstance(records.assessments["dpia-2024-002"], Assessment)


# ---- privacy budget ----------------------------------------------------------------------------------


def test_privacy_budget_passes_within_caps(run_rule, db_settings) -> None:
    from siloguard.privacy.budget import BudgetLedger
    from siloguard.privacy.dp import epsilon_of

    history = [(1.5, 0.05, 10)]
    eps = epsilon_of("rdp", history, 1e-5)
    BudgetLedger(db_settings.database.url).record_round(
        store="germany", accountant="rdp", history=history, delta=1e-5, epsilon=eps, epsilon_cap=8.0, server_round=1
    )
    result = run_rule("privacy-budget", settings=db_settings)
    assert result.status == "passed"
    assert result.outcome.counts == {"stores": 1, "stores_over_cap": 0}


def test_privacy_budget_fails_for_a_store_over_its_cap(run_rule, db_settings) -> None:
    from siloguard.privacy.dp import epsilon_of
    from siloguard.storage.orm import privacy_ledger

    history = [(0.6, 0.5, 200)]
    eps = epsilon_of("rdp", history, 1e-5)
    engine = create_engine(db_settings.database.url)
    upgrade_database(engine)
    with engine.begin() as conn:  # what a buggy or bypassed writer could leave behind
        conn.execute(privacy_ledger.insert().values(
            store="france", accountant="rdp", history="[[0.6, 0.5, 200]]", delta=1e-5, epsilon=eps,
            epsilon_cap=1.0, rounds=3, updated_at=NOW))
    engine.dispose()
    result = run_rule("privacy-budget", settings=db_settings)
    assert result.status == "failed"
    assert result.outcome.findings == [f"store france has spent epsilon {eps:.3f}, over its cap 1.0"]


# ---- audit log ------------------------------------------------------------------------------------------


def _log_with_head(settings: Settings, tmp_path: Path) -> Settings:
    from siloguard.audit import AuditEvent, AuditLog
    from siloguard.audit.heads import generate_keypair, load_signing_key

    keyed = settings.with_overrides(audit={"signing_key": tmp_path / "a.key", "public_key": tmp_path / "a.pub"})
    generate_keypair(keyed.audit.signing_key, keyed.audit.public_key)
    engine = create_engine(keyed.database.url)
    upgrade_database(engine)
    engine.dispose()
    with AuditLog.open(keyed, signer=load_signing_key(keyed.audit.signing_key)) as log:
        log.append([AuditEvent(actor="coordinator", action="federation.round", resource="model:global",
                               purpose="personalize.profiling", round=r) for r in (1, 2, 3)])
        log.sign_head()
    return keyed


def test_audit_log_verifies(run_rule, db_settings, tmp_path: Path) -> None:
    keyed = _log_with_head(db_settings, tmp_path)
    result = run_rule("audit-log-verifies", settings=keyed)
    assert result.status == "passed"
    assert result.outcome.counts["events"] == 3 and result.outcome.counts["heads"] >= 1


def test_audit_log_fails_when_an_event_was_changed(run_rule, db_settings, tmp_path: Path) -> None:
    keyed = _log_with_head(db_settings, tmp_path)
    engine = create_engine(keyed.database.url)
    with engine.begin() as conn:
        body = conn.execute(sa.text("SELECT body FROM audit_events WHERE seq = 1")).scalar_one()
        conn.execute(sa.text("UPDATE audit_events SET body = :b WHERE seq = 1"), {"b": bytes(body).replace(b'"round":2', b'"round":7')})
    engine.dispose()
    result = run_rule("audit-log-verifies", settings=keyed)
    assert result.status == "failed" and result.is_error
    assert result.outcome.findings[0].startswith("the audit log does not verify")


def test_when_the_audit_log_is_empty_then_it_is_a_warning_not_a_pass(run_rule, db_settings) -> None:
    result = run_rule("audit-log-verifies", settings=db_settings)
    assert result.status == "warning" and not result.is_error
    assert "wiped" in result.outcome.findings[0]


def test_audit_log_without_a_key_is_a_warning(run_rule, settings, tmp_path: Path) -> None:
    keyed = _log_with_head(settings, tmp_path)
    result = run_rule("audit-log-verifies", settings=keyed.with_overrides(audit={"public_key": tmp_path / "missing.pub"}))
    assert result.status == "warning" and not result.is_error
    assert "no trusted public key" in result.outcome.findings[0]


# ---- consent state ------------------------------------------------------------------------


def test_consent_state_rebuilds_passes_then_fails_when_the_table_was_changed(run_rule, db_settings) -> None:
    registry = ConsentRegistry(db_settings.database.url)
    try:
        registry.record("v1.a", "personalize.profiling", "grant", source="store", at=NOW - timedelta(days=2))
        registry.record("v1.a", "personalize.profiling", "withdraw", source="web", at=NOW - timedelta(days=1))
        result = run_rule("consent-state-rebuilds", settings=db_settings)
        assert result.status == "passed"
        assert result.outcome.counts == {"events": 2, "state_rows": 1, "missing": 0, "extra": 0}
        with registry.engine.begin() as conn:
            conn.execute(sa.text("UPDATE consent_state SET ord = ord - 1"))  # the withdrawal now reads as a grant
        result = run_rule("consent-state-rebuilds", settings=db_settings)
        assert result.status == "failed" and result.is_error
        assert result.outcome.counts["missing"] == 1 and result.outcome.counts["extra"] == 1
        assert "rebuilt" in result.outcome.findings[0]
    finally:
        registry.close()
