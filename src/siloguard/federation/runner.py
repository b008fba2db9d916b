"""Run a federation on the Flower simulation engine (one virtual node per store).

``prepare_run`` (:mod:`siloguard.federation.prepare`, re-exported here) reads and validates
the input completely in memory, and only then writes the stores' silos (each an Online
Retail file of its own, as a partner store would hold), the public product catalogue and
``run.json`` into the work directory. ``run_federation`` then starts the Flower simulation
engine (Ray) with the ServerApp and one ClientApp per store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from siloguard.config import Settings
from siloguard.errors import FederationError, SiloguardError
from siloguard.federation.app import FederationOutcome, build_server_app
from siloguard.federation.prepare import PreparedRun, prepare_run
from siloguard.federation.strategy import RoundReport

__all__ = ["PreparedRun", "prepare_run", "run_federation"]


def run_federation(
    settings: Settings,
    prepared: PreparedRun,
    on_round: Callable[[RoundReport], None] | None = None,
    *,
    verbose: bool = False,
) -> FederationOutcome:
    """Run ``settings.federation.rounds`` rounds over every prepared store."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation  # heavy import: only when a run starts

    from siloguard.clients.app import build_client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    without = sorted(name for name, n in prepared.consented.items() if n == 0)
    if without:
        from siloguard.errors import ConfigError

        raise ConfigError(
            f"no customer of store(s) {', '.join(without)} has a live consent for personalize.profiling, "
            "so the gate lets nothing train: import the consents your stores collected "
            "(siloguard train --consent FILE, or siloguard consent import FILE)"
        )
    n_stores = len(prepared.stores)
    settings = settings.with_overrides(
        federation={"min_stores": min(settings.federation.min_stores, n_stores)}
    )
    outcome = FederationOutcome()
    run_simulation(
        server_app=build_server_app(settings, on_round, outcome),
        client_app=build_client_app(settings),
        num_supernodes=n_stores,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": verbose},
        },
    )
    if isinstance(outcome.error, SiloguardError):
        raise outcome.error
    if outcome.error is not None:
        raise FederationError(f"the federated run failed: {outcome.error}") from outcome.error
    if outcome.model_dir is None:
        raise FederationError("the federated run ended without a model: rerun with --verbose to see Flower's log")
    return outcome
