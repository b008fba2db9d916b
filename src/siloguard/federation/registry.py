"""Saving the global model: shared parameters only, with a manifest.

The model file holds the shared parameters (item table and repeat head); it
holds no customer embedding and no customer id. The manifest records what
produced it (settings, rounds, stores) and what it scored, with the file's
sha256 so a reader can check it was not swapped.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from siloguard import __version__
from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.recommender.model import SharedModel

if TYPE_CHECKING:
    from siloguard.federation.strategy import RoundReport

__all__ = ["MODEL_FILE", "MANIFEST_FILE", "save_model", "sha256_file"]

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def privacy_summary(settings: Settings, reports: dict[int, RoundReport]) -> dict[str, object]:
    """What the model's privacy guarantee is, per store, from the stores' own reports."""
    p = settings.privacy
    central = None
    if p.central:
        from siloguard.privacy.dp import epsilon_of

        rounds_trained = sum(1 for rep in reports.values() if rep.train)
        central = {
            "unit": "store (one store's whole update per round)",
            "mechanism": "Flower DifferentialPrivacyServerSideFixedClipping",
            "noise_multiplier": p.central_noise_multiplier,
            "clipping_norm": p.central_clipping_norm,
            "sampling": "all stores every round (no amplification)",
            "rounds": rounds_trained,
            "accountant": "rdp",
            "delta": p.central_delta,
            "epsilon": epsilon_of("rdp", [(p.central_noise_multiplier, 1.0, rounds_trained)], p.central_delta)
            if rounds_trained
            else 0.0,
        }
    if not p.enabled:
        return {"enabled": False, "note": "trained without customer-level differential privacy", "central": central}
    per_store: dict[str, dict[str, float]] = {}
    for _round, report in sorted(reports.items()):
        for store, metrics in report.train.items():
            if "epsilon" in metrics:
                per_store[store] = {
                    "epsilon": float(metrics["epsilon"]),
                    "delta": float(metrics["delta"]),
                    "steps": int(metrics["dp-steps"]),
                }
    return {
        "enabled": True,
        "unit": "customer (all of a customer's purchases in a store)",
        "accountant": p.accountant,
        "sampling": (
            f"Poisson sampling of customers, rate {p.sample_rate} configured "
            "(per store the rate Opacus uses is 1 / ceil(n / round(rate x n)))"
        ),
        "noise_multiplier": p.noise_multiplier,
        "max_grad_norm": p.max_grad_norm,
        "epsilon_cap": p.epsilon_cap,
        "per_store": per_store,
        "skipped": {r: rep.skipped for r, rep in sorted(reports.items()) if rep.skipped},
        "central": central,
    }


def save_model(model: SharedModel, settings: Settings, reports: dict[int, RoundReport]) -> Path:
    """Write ``model.pt`` and ``manifest.json`` under ``work_dir/model`` atomically."""
    out = settings.work_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    final = reports[max(reports)]
    buffer = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buffer)
    write_atomic(out / MODEL_FILE, buffer.getvalue(), mode=0o600)
    manifest = {
        "format": "siloguard.model/1",
        "version": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"),
        "siloguard": __version__,
        "sha256": sha256_file(out / MODEL_FILE),
        "file": MODEL_FILE,
        "shared_parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
        "config": settings.to_run_config(),
        "rounds": len(reports),
        "privacy": privacy_summary(settings, reports),
        "stores": sorted(final.evaluate),
        "metrics": {
            "overall": _finite(final.overall),
            "per_store": {s: _finite(m) for s, m in sorted(final.evaluate.items())},
        },
        "history": [
            {"round": r, **_finite({k: v for k, v in rep.overall.items() if k in ("ndcg@10", "hr@10", "recall@20", "users")})}
            for r, rep in sorted(reports.items())
        ],
    }
    write_atomic(out / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    return out
