"""The Flower ServerApp: FedAvg over the stores' shared parameters.

``build_server_app(settings, on_round, outcome)`` binds settings and progress
callbacks for in-process runs (the CLI on the simulation engine); the module
level ``app`` reads them from Flower's run config for ``flwr run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError, FederationError, PrivacyBudgetError
from siloguard.federation.registry import save_model
from siloguard.federation.strategy import RoundReport, SiloFedAvg
from siloguard.recommender.model import SharedModel
from siloguard.runs import load_catalogue, run_manifest

__all__ = ["FederationOutcome", "app", "build_server_app", "run_server"]


@dataclass
class FederationOutcome:
    """Filled by the server as the run goes; read by the caller afterwards."""

    reports: dict[int, RoundReport] = field(default_factory=dict)
    model_dir: str | None = None
    error: BaseException | None = None
    chosen_round: int | None = None  # the round whose global model was registered


def _prepare_if_missing(settings: Settings) -> None:
    """Under ``flwr run`` nothing has prepared the stores yet: do it here.

    Runs in the ServerApp before the first message goes out, so the
    ClientApps (which read ``run.json`` only when a message arrives) see
    a complete run. An existing ``run.json`` is reused as it is.
    """
    if (settings.work_dir / "run.json").is_file():
        return
    from siloguard.federation.prepare import prepare_run  # the data loading stack only when needed

    prepare_run(settings)


def _n_items(settings: Settings) -> int:
    run = run_manifest(settings.work_dir)
    try:
        return load_catalogue(run.require_catalogue()).size
    except DataError:
        raise ConfigError(f"the run in {settings.work_dir} has no readable catalogue: prepare it again") from None


def _shared_config(settings: Settings) -> dict[str, object]:
    """What every store needs of the run: the catalogue's product codes (in item order), their
    published descriptions (aligned with the codes, "" for none; the shared model's public item
    features are computed from them) and the split."""
    from siloguard.runs import load_descriptions

    run = run_manifest(settings.work_dir)
    codes = list(load_catalogue(run.require_catalogue()).codes)
    shelf = load_descriptions(run.require_catalogue())
    return {
        "catalogue": codes, "descriptions": [shelf.get(c, "") for c in codes],
        "split-date": str(run.split_date), "end-date": str(run.end_date),
    }


def _n_stores(settings: Settings) -> int:
    return len(run_manifest(settings.work_dir).names)


def round_events(report: RoundReport, purpose: str = "personalize.profiling") -> list:
    """Audit events of one round: participants and outcome, and each store's privacy spend.

    Ids and counts only: store names, round number, how many stores trained, were left out
    at their budget, dropped out or failed, whose updates were accepted or rejected (and
    why), the sha256 of the round's global model (as integers: see
    ``registry.sha256_counts``), and the epsilon a store spent in the round (in millionths).
    A dropped node whose store never named itself is counted, not listed (its id is a number).
    """
    from siloguard.audit import AuditEvent
    from siloguard.audit.vocabulary import (
        COMPLIANCE_PREFLIGHT,
        COUNT_EPSILON_E6,
        FEDERATION_ROUND,
        PRIVACY_SPEND,
        STORE_DROPPED,
        UPDATE_ACCEPTED,
        UPDATE_REJECTED,
    )
    from siloguard.federation.registry import sha256_counts

    events = [
        AuditEvent(
            actor="coordinator",
            action=FEDERATION_ROUND,
            resource="model:global",
            purpose=purpose,
            decision="info",
            counts={
                "stores_trained": len(report.train),
                "stores_skipped": len(report.skipped),
                "stores_evaluated": len(report.evaluate),
                "stores_dropped": len(report.dropped),
                "updates_accepted": len(report.participants),
                "updates_rejected": len(report.rejected),
                "failures": report.failures,
                **(sha256_counts(report.model_sha256) if report.model_sha256 else {}),
            },
            round=report.server_round,
        )
    ]
    for store in report.participants:
        events.append(
            AuditEvent(actor="coordinator", action=UPDATE_ACCEPTED, resource="model:global", purpose=purpose,
                       decision="allow", round=report.server_round, store=store)
        )
    for store, reason in sorted(report.rejected.items()):
        events.append(
            AuditEvent(actor="coordinator", action=UPDATE_REJECTED, resource="model:global", purpose=purpose,
                       decision="deny", reason=reason, round=report.server_round, store=store)
        )
    for store in sorted(s for s in report.dropped if not s.startswith("node-")):
        events.append(
            AuditEvent(actor="coordinator", action=STORE_DROPPED, resource="model:global", purpose=purpose,
                       decision="info", reason="no-reply", round=report.server_round, store=store)
        )
    for store in sorted(report.train):
        metrics = report.train[store]
        if "compliance-rules" in metrics:  # the store's own pre-flight on its site, as it reported it
            events.append(
                AuditEvent(
                    actor="coordinator", action=COMPLIANCE_PREFLIGHT, resource="rules:gdpr-ccpa", purpose=purpose,
                    decision="info", reason="store-reported", round=report.server_round, store=store,
                    counts={k: int(metrics.get(f"compliance-{k}", 0)) for k in ("rules", "failed", "warnings")},
                )
            )
        if "epsilon" not in metrics:
            continue
        before = report.budgets.get(store, {}).get("epsilon", 0.0)
        events.append(
            AuditEvent(
                actor=f"store:{store}",
                action=PRIVACY_SPEND,
                resource="model:global",
                purpose=purpose,
                decision="info",
                counts={
                    COUNT_EPSILON_E6: round(max(0.0, metrics["epsilon"] - before) * 1e6),
                    "epsilon_total_e6": round(metrics["epsilon"] * 1e6),
                    "steps": int(metrics["dp-steps"]),
                    # what the store says it is held to, for the report's cap line and delta
                    **({"epsilon_cap_e6": round(float(metrics["epsilon-cap"]) * 1e6)} if "epsilon-cap" in metrics else {}),
                    **({"delta_e12": round(float(metrics["delta"]) * 1e12)} if "delta" in metrics else {}),
                },
                round=report.server_round,
                store=store,
            )
        )
    return events


def _witnessed(audit) -> dict[str, list]:  # noqa: ANN001 - AuditLog
    """The stores' heads this coordinator witnessed before (its own log), per store."""
    from siloguard.audit.witness import witnessed_heads

    return witnessed_heads(stored.event for stored in audit.iter_events())


def witness_events(report: RoundReport, witnessed: dict[str, list]) -> list:
    """Witness each store's signed audit head from its reply (checked, pinned, never going back)."""
    from siloguard.audit.witness import witness

    events = []
    for store, record in sorted(report.heads.items()):
        head = {k: v for k, v in record.items() if k != "public-key"}
        try:
            seen, event = witness(store, head, str(record.get("public-key", "")), witnessed.get(store, []),
                                  server_round=report.server_round)
        except Exception:  # noqa: BLE001  malformed (whatever a store sent): recorded as refused, without numbers
            from siloguard.audit import AuditEvent
            from siloguard.audit.vocabulary import HEAD_REFUSED

            events.append(AuditEvent(actor="coordinator", action=HEAD_REFUSED, resource="audit:store-log",
                                     purpose="personalize.profiling", decision="deny", reason="malformed",
                                     store=store, round=report.server_round))
            continue
        if seen.accepted:
            witnessed.setdefault(store, []).append(seen.head)
        events.append(event)
    return events


def registered_event(version_dir: Path):  # noqa: ANN201 - AuditEvent imported lazily
    """The audit event of a new model version: its id and its file's sha256."""
    from siloguard.audit import AuditEvent
    from siloguard.audit.vocabulary import MODEL_REGISTERED
    from siloguard.federation.registry import MANIFEST_FILE, sha256_counts

    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    return AuditEvent(
        actor="coordinator",
        action=MODEL_REGISTERED,
        resource=f"model:{manifest['version']}",
        purpose="personalize.profiling",
        decision="info",
        reason=f"parent-{manifest['parent']}" if manifest["parent"] else "parent-none",
        counts={"rounds": int(manifest["rounds"]), "stores": len(manifest["participants"]), **sha256_counts(manifest["sha256"])},
    )


def _open_audit(settings: Settings):  # noqa: ANN202 - SQLAlchemy only when a run starts
    from siloguard.audit import AuditLog
    from siloguard.storage.db import create_engine, upgrade_database

    engine = create_engine(settings.database.url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    return AuditLog.open(settings)


def run_server(
    grid: Grid,
    settings: Settings,
    on_round: Callable[[RoundReport], None] | None = None,
    outcome: FederationOutcome | None = None,
) -> FederationOutcome:
    outcome = outcome if outcome is not None else FederationOutcome()
    audit = _open_audit(settings)
    witnessed = _witnessed(audit)

    def audited(report: RoundReport) -> None:
        # fail closed: a round that cannot be audited stops the run
        audit.append(round_events(report) + witness_events(report, witnessed))
        if on_round is not None:
            on_round(report)

    try:
        from siloguard.compliance.engine import preflight

        # GDPR/CCPA rules of scope "training", audited, before any message reaches a store:
        # an error-severity failure raises ComplianceError naming the rule and the fix.
        preflight(settings, audit)
        fed = settings.federation
        model = SharedModel(_n_items(settings), settings.model.dim, settings.model.hidden, seed=settings.model.seed)
        strategy = SiloFedAvg(
            on_round=audited,
            budget_aware=settings.privacy.enabled,
            query_timeout=fed.round_timeout,
            fraction_train=fed.fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=fed.min_stores,
            min_evaluate_nodes=fed.min_stores,
            min_available_nodes=fed.min_stores,
            weighted_by_key="num-examples",
            aggregator=fed.aggregator,
            trim_fraction=fed.trim_fraction,
            max_update_norm=fed.max_update_norm,
            outlier_factor=fed.outlier_factor,
            # Without DP the best round by validation is kept. Under DP the last round is: the
            # stores' validation metrics are not DP outputs, and choosing a model by them would
            # spend privacy no accountant counts.
            keep_best=fed.keep_best_round and not settings.privacy.enabled and not settings.privacy.central,
        )
        runner: object = strategy
        if settings.privacy.central:
            # Central DP: Flower's wrapper clips each store's update to a fixed norm and adds
            # Gaussian noise to the aggregate. The unit is a whole store; its accounting is
            # separate from the per-store customer-level budgets (registry.privacy_summary).
            from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

            runner = DifferentialPrivacyServerSideFixedClipping(
                strategy,
                noise_multiplier=settings.privacy.central_noise_multiplier,
                clipping_norm=settings.privacy.central_clipping_norm,
                num_sampled_clients=_n_stores(settings),
            )
        # The public catalogue and the split travel with every message: a store reads nothing
        # of the coordinator's (its ClientApp may run on another company's machine).
        shared = _shared_config(settings)
        result = runner.start(  # type: ignore[attr-defined]
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=fed.rounds,
            timeout=fed.round_timeout,
            train_config=ConfigRecord({"dim": settings.model.dim, **shared}),
            evaluate_config=ConfigRecord(dict(shared)),
        )
        outcome.reports = strategy.reports
        final = strategy.reports.get(fed.rounds)
        trained = any(rep.train for rep in strategy.reports.values())
        if not trained and any(rep.skipped for rep in strategy.reports.values()):
            raise PrivacyBudgetError(
                "every store is at its privacy budget: nothing was trained. Raise --epsilon-cap, "
                "or start a new run in a fresh --out (the ledger lives in its database)"
            )
        if not trained or len(result.arrays) == 0 or final is None or not final.evaluate:
            raise RuntimeError("the federation produced no model: no store completed a round (see the log above)")
        if not any(rep.participants for rep in strategy.reports.values()):
            raise FederationError(
                "every store's update was rejected (federation.update_rejected in the audit log says why): "
                "no model was registered"
            )
        chosen = strategy.best_arrays if strategy.best_arrays is not None else result.arrays
        outcome.chosen_round = strategy.best_round if strategy.best_arrays is not None else max(strategy.reports)
        model.load_state_dict(chosen.to_torch_state_dict())
        outcome.model_dir = str(save_model(model, settings, strategy.reports, chosen_round=outcome.chosen_round))
        audit.append([registered_event(Path(outcome.model_dir))])
        return outcome
    finally:
        audit.close()


def build_server_app(
    settings: Settings | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    outcome: FederationOutcome | None = None,
) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = settings if settings is not None else Settings.from_run_config(dict(context.run_config))
        try:
            if settings is None:  # ``flwr run``: no CLI has prepared the run
                _prepare_if_missing(resolved)
            run_server(grid, resolved, on_round, outcome)
        except BaseException as exc:  # recorded for the caller, then re-raised for Flower
            if outcome is not None:
                outcome.error = exc
            raise

    return server


#: Entry point for ``flwr run`` (``[tool.flwr.app.components] serverapp``).
app = build_server_app()
