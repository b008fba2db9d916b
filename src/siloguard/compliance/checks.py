"""The checks the rules name: one function per check, ``(context, scope) -> Outcome``.

A check reads what its rule says it inspects and returns what it found: ``passed``,
``failed``, ``warning`` (something an officer should see that does not by itself break the
rule) or ``not_applicable`` (the input does not exist yet; the reason says why). Findings
are plain language and hold store names, dataset, column and purpose names, counts and
dates: never a customer id, name or other record value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import pandas as pd

from siloguard.compliance.context import STORE_DATASET, TRAINING_PURPOSE, Context
from siloguard.compliance.records import Activity
from siloguard.errors import AuditIntegrityError
from siloguard.policies.taxonomy import ancestors, covers, load_taxonomy

__all__ = ["CHECKS", "Coverage", "Outcome", "Status", "activity_categories"]

Status = Literal["passed", "failed", "warning", "not_applicable"]


@dataclass(frozen=True)
class Coverage:
    """Consent coverage of one store and purpose (the officer report's consent section)."""

    store: str
    purpose: str
    subjects: int
    consented: int


@dataclass
class Outcome:
    status: Status
    findings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    coverage: list[Coverage] = field(default_factory=list)


def _judge(failures: list[str], passed: str, counts: dict[str, int], warnings: list[str] | None = None) -> Outcome:
    if failures:
        return Outcome("failed", failures + (warnings or []), counts)
    if warnings:
        return Outcome("warning", warnings, counts)
    return Outcome("passed", [passed], counts)


def _stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- data maps and records ------------------------------------------------------------------


def lawful_basis(ctx: Context, scope: str) -> Outcome:
    bases = load_taxonomy().lawful_bases
    failures: list[str] = []
    pairs = 0
    for act in ctx.activities(scope):
        if act.lawful_basis is not None and act.lawful_basis not in bases:
            failures.append(f"activity {act.id}: lawful_basis {act.lawful_basis!r} is not one of {', '.join(bases)}")
        if not act.datasets and act.lawful_basis is None:
            failures.append(f"activity {act.id} reads no mapped dataset and states no lawful_basis")
        for dataset, datamap, _, purpose in ctx.flows(act):
            pairs += 1
            if datamap is None:
                failures.append(f"activity {act.id} reads dataset {dataset!r}, which has no data map")
                continue
            basis = datamap.lawful_basis(purpose)
            if basis is None:
                failures.append(f"dataset {dataset!r} declares no lawful basis for {purpose} (activity {act.id})")
            elif act.lawful_basis is not None and act.lawful_basis != basis:
                failures.append(
                    f"activity {act.id} states basis {act.lawful_basis} but dataset {dataset!r} declares "
                    f"{basis} for {purpose}"
                )
    return _judge(failures, f"{pairs} (dataset, purpose) pair(s) of the activities have a declared lawful basis", {"pairs": pairs})


def purpose_limitation(ctx: Context, scope: str) -> Outcome:
    failures: list[str] = []
    pairs = 0
    activities = ctx.activities(scope)
    for act in activities:
        for dataset, datamap, _, purpose in ctx.flows(act):
            pairs += 1
            if datamap is None:
                continue  # lawful-basis reports an unmapped dataset
            if datamap.lawful_basis(purpose) is None or not datamap.columns_for(purpose):
                declared = ", ".join(sorted(datamap.lawful_bases))
                failures.append(
                    f"activity {act.id} uses dataset {dataset!r} for {purpose}, which is not among its declared uses ({declared})"
                )
    if scope == "training":
        purposes = {p for act in activities for p in act.purposes}
        if not any(covers(p, TRAINING_PURPOSE) for p in purposes):
            failures.append(f"the federation trains for {TRAINING_PURPOSE}, which no training activity declares")
    return _judge(failures, f"{pairs} (dataset, purpose) pair(s) are among the datasets' declared uses", {"pairs": pairs})


def data_minimisation(ctx: Context, scope: str) -> Outcome:
    failures: list[str] = []
    columns_read = 0
    for act in ctx.activities(scope):
        for dataset, datamap, columns, purpose in ctx.flows(act):
            if datamap is None:
                continue
            columns_read += len(columns)
            allowed = datamap.columns_for(purpose)
            extra = [c for c in columns if c not in allowed]
            if extra:
                failures.append(
                    f"activity {act.id} reads {', '.join(extra)} of {dataset!r}, which the data map does not allow for {purpose}"
                )
    training = [a for a in ctx.activities(scope) if a.federation_training]
    if training:
        # The record must not understate what the federation client really reads.
        from siloguard.runs import TRAINING_COLUMNS, TRAINING_DATASET

        for act in training:
            unrecorded = [c for c in TRAINING_COLUMNS if c not in act.datasets.get(TRAINING_DATASET, ())]
            if unrecorded:
                failures.append(
                    f"the federation client reads {', '.join(unrecorded)} of {TRAINING_DATASET!r}, which activity "
                    f"{act.id} does not record"
                )
    return _judge(failures, "every column the activities read is allowed for their purposes", {"columns_read": columns_read})


def activity_categories(ctx: Context, act: Activity) -> set[str]:
    found = set(act.data_categories)
    for dataset, columns in act.datasets.items():
        datamap = ctx.datamaps.get(dataset)
        if datamap is not None:
            found |= {datamap.columns[c].category for c in columns if c in datamap.columns}
    return found


def _matches(categories: set[str], keys: tuple[str, ...]) -> list[str]:
    return sorted(c for c in categories if any(covers(k, c) for k in keys))


def sensitive_data(ctx: Context, scope: str) -> Outcome:
    sens = ctx.records.sensitivity
    failures: list[str] = []
    reading = 0
    for act in ctx.activities(scope):
        categories = activity_categories(ctx, act)
        special = _matches(categories, sens.gdpr_special)
        sensitive = _matches(categories, sens.ccpa_sensitive)
        reading += bool(special or sensitive)
        if special and act.art9_basis not in sens.art9_conditions:
            failures.append(
                f"activity {act.id} reads special-category data ({', '.join(special)}) without an Art. 9(2) "
                f"condition (art9_basis: one of {', '.join(sens.art9_conditions)})"
            )
        permitted = all(any(covers(u, p) for u in sens.ccpa_permitted_uses) for p in act.purposes)
        if sensitive and not (act.honours_limit_use or permitted):
            failures.append(
                f"activity {act.id} uses sensitive personal information ({', '.join(sensitive)}) for purposes "
                "11 CCR 7027(m) does not permit and does not honour limit-use requests"
            )
    if not reading and not failures:
        return Outcome("passed", ["no activity reads special-category or sensitive data"], {"activities": 0})
    return _judge(failures, f"{reading} activity(ies) read sensitive data with the required basis", {"activities": reading})


_ART30 = {
    "(a) controller name and contact": lambda ctx, a: bool((a.controller or ctx.records.controller).get("name"))
    and bool((a.controller or ctx.records.controller).get("contact")),
    "(b) purposes": lambda ctx, a: bool(a.purposes),
    "(c) data subjects": lambda ctx, a: bool(a.data_subjects),
    "(c) personal data categories": lambda ctx, a: bool(activity_categories(ctx, a)),
    "(d) recipients": lambda ctx, a: bool(a.recipients),
    "(e) third-country transfers": lambda ctx, a: bool(a.transfers),
    "(f) erasure time limits": lambda ctx, a: bool(a.erasure)
    or (bool(a.datasets) and all(d in ctx.datamaps for d in a.datasets)),
    "(g) security measures": lambda ctx, a: bool(a.security),
}


def records_of_processing(ctx: Context, scope: str) -> Outcome:
    failures: list[str] = []
    activities = ctx.activities(scope)
    for act in activities:
        missing = [name for name, present in _ART30.items() if not present(ctx, act)]
        if missing:
            failures.append(f"activity {act.id} lacks Art. 30(1) {'; '.join(missing)}")
    if not any(a.federation_training for a in ctx.records.activities.values()):
        failures.append("no activity records the federation's training (federation_training: true)")
    return _judge(failures, f"{len(activities)} activity record(s) hold every Art. 30(1) field", {"activities": len(activities)})


def dpia_approved(ctx: Context, scope: str) -> Outcome:
    failures: list[str] = []
    needed = 0
    today = ctx.now.date()
    for act in ctx.activities(scope):
        special = _matches(activity_categories(ctx, act), ctx.records.sensitivity.gdpr_special)
        if not ((act.profiling and act.large_scale) or special):
            continue
        needed += 1
        why = "large-scale profiling" if act.profiling and act.large_scale else "special-category data"
        dpia = ctx.records.assessments.get(act.dpia or "")
        if act.dpia is None:
            failures.append(f"activity {act.id} ({why}) names no DPIA")
        elif dpia is None:
            failures.append(f"activity {act.id} names DPIA {act.dpia}, which is not in dpia.yaml")
        elif dpia.activity != act.id:
            failures.append(f"DPIA {dpia.id} assesses activity {dpia.activity}, not {act.id}")
        elif dpia.status != "approved":
            failures.append(f"DPIA {dpia.id} of activity {act.id} is {dpia.status}, not approved")
        elif dpia.approved_on is None or dpia.approved_on > today:
            failures.append(f"DPIA {dpia.id} of activity {act.id} is approved only from {dpia.approved_on}")
    return _judge(failures, f"{needed} activity(ies) needing a DPIA have an approved one", {"dpia_required": needed})


# ---- the stores' data, consent and transfers ---------------------------------------------------


_NO_STORE_ROWS = ("no store rows at this site: each store judges its own rows on its own site "
                  "(siloguard check --run STORE_SITE; in training, each store's pre-flight)")


def _no_store_rows(ctx: Context) -> Outcome | None:
    """The coordinator of a run of sites holds no store rows: the store rules are the stores' to run."""
    return Outcome("not_applicable", [_NO_STORE_ROWS]) if not ctx.stores else None


def consent_records(ctx: Context, scope: str) -> Outcome:
    if (missing := _no_store_rows(ctx)) is not None:
        return missing
    failures: list[str] = []
    warnings: list[str] = []
    coverage: list[Coverage] = []
    subjects_total = consented_total = 0
    for act in ctx.activities(scope):
        purposes = sorted(
            {p for _, datamap, _, p in ctx.flows(act) if datamap is not None and datamap.lawful_basis(p) == "consent"}
        )
        for purpose in purposes:
            empty: list[str] = []
            for store, rows in ctx.stores.items():
                subjects = rows.customer_ids
                view = ctx.store_consent(store)
                granted = view.subjects_with_basis(purpose, subjects, ctx.now) if view is not None else set()
                coverage.append(Coverage(store, purpose, len(subjects), len(granted)))
                subjects_total += len(subjects)
                consented_total += len(granted)
                missing = len(subjects) - len(granted)
                if act.consent_gated:
                    if subjects and not granted:
                        empty.append(store)
                elif missing:
                    failures.append(
                        f"store {store}: {missing} of {len(subjects)} subjects in the flow of activity {act.id} have "
                        f"no live consent for {purpose} on {_stamp(ctx.now)}"
                    )
            if empty:
                warnings.append(
                    f"activity {act.id}: no subject of store(s) {', '.join(empty)} has a live consent for {purpose}; "
                    "the gate passes nobody there"
                )
    if not coverage and not failures:
        return Outcome("passed", ["no activity rests on consent"], {"subjects": 0, "consented": 0})
    outcome = _judge(
        failures,
        f"every subject in a consent-based flow has a live consent ({consented_total} of {subjects_total} "
        "subject-purposes consented; the gate keeps only those)",
        {"subjects": subjects_total, "consented": consented_total},
        warnings,
    )
    outcome.coverage = coverage
    return outcome


def opt_out_honoured(ctx: Context, scope: str) -> Outcome:
    if (missing := _no_store_rows(ctx)) is not None:
        return missing
    import sqlalchemy as sa

    from siloguard.policies.consent import SALE_AND_SHARING
    from siloguard.storage.orm import consent_events

    selling = [a for a in ctx.activities(scope) if a.sells_or_shares or any(
        covers(s, p) for p in a.purposes for s in SALE_AND_SHARING)]
    if not selling:
        return Outcome("passed", ["no activity sells or shares personal information"], {"opted_out": 0})
    failures: list[str] = []
    opted_total = 0
    for act in selling:
        purposes = [p for p in act.purposes if any(covers(s, p) for s in SALE_AND_SHARING)] or list(SALE_AND_SHARING)
        for store, rows in ctx.stores.items():
            view = ctx.store_consent(store)
            if view is None:
                continue  # no keys: no opt-out can have been recorded for this store
            refs = {view.subject(cid): cid for cid in rows.customer_ids}
            opted: set[str] = set()
            for purpose in purposes:
                query = (
                    sa.select(consent_events.c.subject)
                    .where(
                        consent_events.c.kind == "opt_out",
                        consent_events.c.purpose.in_(ancestors(purpose)),
                        consent_events.c.subject.in_(list(refs)),
                        consent_events.c.at <= ctx.now,
                    )
                    .distinct()
                )
                with ctx.engine.connect() as conn:
                    out = {refs[r] for (r,) in conn.execute(query)}
                # a later opt-in (grant) wins over an earlier opt-out
                opted |= out - view.subjects_with_basis(purpose, out, ctx.now)
            opted_total += len(opted)
            if opted and not act.consent_gated:
                failures.append(
                    f"store {store}: {len(opted)} subject(s) who opted out of sale/sharing are in the flow of activity {act.id}"
                )
    return _judge(failures, "no opted-out subject is in a sale or sharing flow", {"opted_out": opted_total})


def storage_limitation(ctx: Context, scope: str) -> Outcome:
    if (missing := _no_store_rows(ctx)) is not None:
        return missing
    datamap = ctx.datamaps.get(STORE_DATASET)
    if datamap is None:
        return Outcome("failed", [f"the stores' rows ({STORE_DATASET}) have no data map, so no retention"])
    clock = ctx.data_clock()
    cutoff = pd.Timestamp(clock.astimezone(timezone.utc).replace(tzinfo=None) - datamap.retention_period)
    failures: list[str] = []
    expired_total = rows_total = 0
    for store, rows in ctx.stores.items():
        expired = int((rows.frame["invoice_date"] < cutoff).sum())
        rows_total += len(rows.frame)
        expired_total += expired
        if expired:
            failures.append(
                f"store {store}: {expired} of {len(rows.frame)} {STORE_DATASET} rows are older than the retention "
                f"{datamap.retention} at {_stamp(clock)} (before {cutoff:%Y-%m-%d})"
            )
    return _judge(
        failures,
        f"no row of {len(ctx.stores)} store(s) is older than {datamap.retention} at {_stamp(clock)}",
        # the clock it judged by, for the report: the data's own clock differs from the wall clock
        {"rows": rows_total, "rows_expired": expired_total, "clock_epoch_s": int(clock.timestamp())},
    )


def cross_border_transfers(ctx: Context, scope: str) -> Outcome:
    if (missing := _no_store_rows(ctx)) is not None:
        return missing
    adequacy = ctx.records.adequacy
    coordinator = ctx.records.coordinator_country
    coordinator_free = adequacy.is_free(coordinator)
    failures: list[str] = []
    needing = 0
    for store, rows in ctx.stores.items():
        outside: set[str] = set()
        # A store's declared country is a fact of where it operates; only a store that declares
        # none is judged by the country column of its rows (which may hold store codes).
        countries = [rows.country] if rows.country else sorted(rows.frame["country"].dropna().unique())
        for name in countries:
            codes = adequacy.declared(str(name)) if rows.country else adequacy.codes(str(name))
            if codes is None:
                outside.add("an unlisted country name")
            elif not codes:
                outside.add("an unspecified country")
            else:
                outside |= {c for c in codes if not adequacy.is_free(c)}
        if not outside and coordinator_free:
            continue
        needing += 1
        why = (
            f"holds data of {', '.join(sorted(outside))} (no adequacy decision)"
            if outside
            else f"sends updates to a coordinator in {coordinator} (no adequacy decision)"
        )
        mechanism = ctx.records.transfers.get(store)
        if mechanism is None:
            failures.append(f"store {store} {why} and has no transfer mechanism on record")
        elif mechanism.since > ctx.now.date():
            failures.append(f"store {store}: its transfer mechanism ({mechanism.mechanism}) takes effect only on {mechanism.since}")
    return _judge(
        failures,
        f"{needing} store(s) outside adequacy have a transfer mechanism on record; coordinator in {coordinator}",
        {"stores": len(ctx.stores), "stores_needing_mechanism": needing},
    )


# ---- the database: requests, budget, audit log ---------------------------------------------------------

TERMINAL_STATUSES = ("completed", "denied", "failed", "unverified")  # siloguard.dsr.machine.TERMINAL


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def request_deadlines(ctx: Context, scope: str) -> Outcome:
    import sqlalchemy as sa

    engine = ctx.engine
    if not sa.inspect(engine).has_table("dsr_requests"):
        return Outcome("not_applicable", ["no request queue in this database yet (no dsr_requests table): nothing is due"])
    table = sa.Table("dsr_requests", sa.MetaData(), autoload_with=engine)
    due = table.c.due_at  # the current legal deadline: the queue moves it on a lawful extension
    query = sa.select(table.c.id, due.label("due")).where(table.c.status.not_in(TERMINAL_STATUSES))
    with engine.connect() as conn:
        open_rows = [(rid, _utc(d)) for rid, d in conn.execute(query)]
    overdue = sorted((d, rid) for rid, d in open_rows if d < ctx.now)
    counts = {"requests_open": len(open_rows), "requests_overdue": len(overdue)}
    if overdue:
        oldest = overdue[0][0]
        return Outcome(
            "failed",
            [f"{len(overdue)} of {len(open_rows)} open request(s) are past their due time on {_stamp(ctx.now)} "
             f"(the oldest was due {_stamp(oldest)}; request {overdue[0][1]})"],
            counts,
        )
    return Outcome("passed", [f"{len(open_rows)} open request(s), none past its due time"], counts)


def privacy_budget(ctx: Context, scope: str) -> Outcome:
    import sqlalchemy as sa

    from siloguard.privacy.budget import BudgetLedger
    from siloguard.storage.orm import privacy_ledger

    with ctx.engine.connect() as conn:
        stores = conn.execute(sa.select(sa.func.count()).select_from(privacy_ledger)).scalar_one()
    if not stores:
        return Outcome("passed", ["no store has spent privacy budget yet"], {"stores": 0})
    entries = BudgetLedger(ctx.engine).entries()  # refuses a ledger that does not add up
    failures = [
        f"store {e.store} has spent epsilon {e.epsilon:.3f}, over its cap {e.epsilon_cap}"
        for e in entries
        if e.epsilon > e.epsilon_cap * (1 + 1e-9)
    ]
    top = max(entries, key=lambda e: e.epsilon / e.epsilon_cap)
    return _judge(
        failures,
        f"{len(entries)} store(s) within their caps (highest: {top.store}, epsilon {top.epsilon:.3f} of {top.epsilon_cap})",
        {"stores": len(entries), "stores_over_cap": len(failures)},
    )


def audit_log_verifies(ctx: Context, scope: str) -> Outcome:
    from siloguard.audit.heads import load_public_key
    from siloguard.audit.log import AuditLog

    _ = ctx.engine  # migrated first: AuditLog.open requires the current schema
    with AuditLog.open(ctx.settings, signer=False) as log:
        size = log.size()
        if size == 0:
            # A wiped log looks exactly like a new one: never a pass (`audit verify` fails it).
            return Outcome(
                "warning",
                ["the audit log holds no events: nothing shows it was not wiped (a brand-new deployment has none yet)"],
                {"events": 0},
            )
        key_path = ctx.settings.audit.public_key
        if not key_path.is_file():
            return Outcome(
                "warning",
                [f"the audit log holds {size} events but there is no trusted public key at {key_path}: it cannot be verified"],
                {"events": size},
            )
        if log.latest_head() is None:
            return Outcome(
                "warning",
                [f"the audit log holds {size} events and no signed tree head: nothing vouches for it yet"],
                {"events": size},
            )
        try:
            report = log.verify(load_public_key(key_path))
        except AuditIntegrityError as exc:
            return Outcome(
                "failed", [f"the audit log does not verify: {exc}"] + list(exc.problems[:3]), {"events": size, "problems": len(exc.problems)}
            )
    return Outcome(
        "passed",
        [f"{size} events recompute and {report.heads_checked} signed head(s) check out"],
        {"events": size, "heads": report.heads_checked},
    )


def breach_notification(ctx: Context, scope: str) -> Outcome:
    """Every notification a personal-data breach owes was made in time (the incident register)."""
    import sqlalchemy as sa

    from siloguard.compliance.incidents import IncidentRegister

    engine = ctx.engine
    if not sa.inspect(engine).has_table("incidents"):
        return Outcome("not_applicable", ["no incident register in this database yet: siloguard db upgrade"])
    register = IncidentRegister(engine, audit=None)
    incidents = register.list()
    overdue = register.overdue(ctx.now)
    late = [(i, d) for i in incidents for d in i.dues if d.done_at is not None and d.done_at > d.due_at]
    counts = {"incidents": len(incidents), "incidents_open": sum(i.open for i in incidents),
              "notifications_overdue": len(overdue), "notifications_made_late": len(late)}
    if overdue:
        return Outcome("failed", [
            f"incident {i.id}: {d.clock.party} notification ({d.clock.jurisdiction.upper()}, {d.clock.source.split(' (')[0]}) was due "
            f"{_stamp(d.due_at)} and is not recorded (clock: the wall clock, {_stamp(ctx.now)})"
            for i, d in sorted(overdue, key=lambda pair: pair[1].due_at)
        ], counts)
    findings = [f"{len(incidents)} incident(s) in the register, no notification overdue on {_stamp(ctx.now)}"]
    findings += [f"incident {i.id}: {d.clock.party} told {_stamp(d.done_at)}, after the {_stamp(d.due_at)} deadline: "  # type: ignore[arg-type]
                 "keep the reasons for the delay (GDPR Art. 33(1))" for i, d in late]
    return Outcome("warning" if late else "passed", findings, counts)


def consent_state_rebuilds(ctx: Context, scope: str) -> Outcome:
    """The consent registry's current-state table is what its event log gives (the log decides)."""
    diff = ctx.consent.state_differences()
    counts = {"events": diff["events"], "state_rows": diff["rows"], "missing": diff["missing"], "extra": diff["extra"]}
    if diff["missing"] or diff["extra"]:
        return Outcome("failed", [
            f"the consent state does not match the event log: {diff['missing']} (purpose, subject) pair(s) whose latest "
            f"event it lacks or holds wrongly, {diff['extra']} row(s) the events do not give; consent read from it "
            "may be wrong until it is rebuilt"
        ], counts)
    return Outcome("passed", [
        f"the consent state ({diff['rows']} purpose-subject rows) is exactly what the {diff['events']} consent events give"
    ], counts)


#: Check name (as rules name it) -> function.
CHECKS: dict[str, Callable[[Context, str], Outcome]] = {
    "lawful_basis": lawful_basis,
    "consent_records": consent_records,
    "purpose_limitation": purpose_limitation,
    "data_minimisation": data_minimisation,
    "storage_limitation": storage_limitation,
    "request_deadlines": request_deadlines,
    "opt_out_honoured": opt_out_honoured,
    "sensitive_data": sensitive_data,
    "cross_border_transfers": cross_border_transfers,
    "records_of_processing": records_of_processing,
    "dpia_approved": dpia_approved,
    "privacy_budget": privacy_budget,
    "audit_log_verifies": audit_log_verifies,
    "breach_notification": breach_notification,
    "consent_state_rebuilds": consent_state_rebuilds,
}
