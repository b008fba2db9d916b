"""The model registry: every global model a federation produced, versioned, with a manifest.

Layout under the run's work directory::

    models/v1/model.pt  models/v1/manifest.json
    models/v2/...                                  (parent: v1)
    model -> models/v2                             the current version (a symlink)

A model file holds the shared parameters only (item table and repeat head): no customer
embedding and no customer id. Its manifest records the version, its parent (the version that
was current when it was made), what produced it (settings, rounds, participants per round,
rejected and dropped stores), the privacy spent per store, what it scored, and the file's
sha256 so a reader can check it was not swapped.

A version is written completely in a staging directory and then renamed into place; the
``model`` link is switched with an atomic rename. ``rollback`` points ``model`` back at an
earlier version after checking that version's file against its manifest, and is audited.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from siloguard import __version__
from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError
from siloguard.recommender.model import SharedModel
from siloguard.runs import run_manifest

if TYPE_CHECKING:
    from siloguard.federation.strategy import RoundReport

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "current_version",
    "list_versions",
    "load_manifest",
    "rollback",
    "save_model",
    "sha256_file",
    "sha256_counts",
    "sha256_from_counts",
]

MODEL_FILE = "model.pt"
CATALOGUE_FILE = "catalogue.json"
MANIFEST_FILE = "manifest.json"
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")


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
    per_store: dict[str, dict[str, Any]] = {}
    releases: dict[str, dict[str, float]] = {}
    for server_round, report in sorted(reports.items()):
        for store, sigma in report.released_popularity.items():
            releases[store] = {"round": server_round, "noise": float(sigma)}
        for store, metrics in report.train.items():
            if "epsilon" in metrics:
                noise = dict(per_store.get(store, {}).get("noise_per_round", {}))
                if "noise-multiplier" in metrics:
                    noise[str(server_round)] = float(metrics["noise-multiplier"])
                per_store[store] = {
                    "epsilon": float(metrics["epsilon"]),
                    "delta": float(metrics["delta"]),
                    "steps": int(metrics["dp-steps"]),
                    "noise_per_round": noise,
                }
    for store, release in releases.items():
        per_store.setdefault(store, {})["popularity_release"] = release
    return {
        "enabled": True,
        "unit": "customer (all of a customer's purchases in a store)",
        "accountant": p.accountant,
        "sampling": (
            f"Poisson sampling of customers, rate {p.sample_rate} configured "
            "(per store the rate Opacus uses is 1 / ceil(n / round(rate x n)))"
        ),
        "noise_multiplier": p.noise_multiplier,  # None: planned per store and round (per_store noise_per_round)
        "epsilon_target": p.target_epsilon,
        "max_grad_norm": p.max_grad_norm,
        "epsilon_cap": p.epsilon_cap,
        "popularity_prior": (
            "sum of the stores' DP releases of item popularity (each customer's vector 1/sqrt(k) on their k items, "
            "L2 sensitivity 1, Gaussian noise per item, one Gaussian step in the store's epsilon)"
            if p.popularity_share else None
        ),
        "per_store": per_store,
        "skipped": {r: rep.skipped for r, rep in sorted(reports.items()) if rep.skipped},
        "central": central,
    }


def _models(work_dir: Path) -> Path:
    return work_dir / "models"


def _number(version: str) -> int:
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ConfigError(f"{version!r} is not a model version: versions look like v1, v2, ... (siloguard model list)")
    return int(match.group(1))


def sha256_counts(hexdigest: str) -> dict[str, int]:
    """A sha256 as audit counts (five integers of 13, 13, 13, 13 and 12 hex digits).

    Audit ids may not hold runs of digits, so a hex digest cannot be an id; as integers it
    is exact (each part is below 2**53) and the report can print it back with
    :func:`sha256_from_counts`.
    """
    parts = [hexdigest[i : i + 13] for i in range(0, 64, 13)]
    return {f"sha256_part{i + 1}": int(part, 16) for i, part in enumerate(parts)}


def sha256_from_counts(counts: dict[str, int]) -> str:
    widths = (13, 13, 13, 13, 12)
    return "".join(f"{counts[f'sha256_part{i + 1}']:0{w}x}" for i, w in enumerate(widths))


def current_version(work_dir: Path) -> str | None:
    """The version ``work_dir/model`` points at, or None before the first model."""
    link = work_dir / "model"
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def list_versions(work_dir: Path) -> list[dict[str, Any]]:
    """Every version's manifest, oldest first."""
    folder = _models(work_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _VERSION.fullmatch(p.name) and (p / MANIFEST_FILE).is_file()]
    return [json.loads((p / MANIFEST_FILE).read_text()) for p in sorted(found, key=lambda p: _number(p.name))]


def load_manifest(work_dir: Path, version: str) -> dict[str, Any]:
    path = _models(work_dir) / f"v{_number(version)}" / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except OSError:
        known = ", ".join(m["version"] for m in list_versions(work_dir)) or "none yet"
        raise ConfigError(f"no model version {version} in {_models(work_dir)}: known versions are {known}") from None


def _adopt_legacy(work_dir: Path) -> None:
    """A ``work_dir/model`` directory from before the registry becomes the first version."""
    legacy = work_dir / "model"
    if legacy.is_symlink() or not (legacy / MANIFEST_FILE).is_file():
        return
    folder = _models(work_dir)
    number = max((_number(p.name) for p in folder.iterdir() if _VERSION.fullmatch(p.name)), default=0) + 1
    manifest = json.loads((legacy / MANIFEST_FILE).read_text())
    manifest.update({"version": f"v{number}", "parent": None, "created": manifest.get("version")})
    manifest.setdefault("participants", manifest.get("stores", []))
    write_atomic(legacy / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    os.rename(legacy, folder / f"v{number}")
    _point_at(work_dir, f"v{number}")


def _point_at(work_dir: Path, version: str) -> None:
    """Switch ``work_dir/model`` to ``models/<version>`` with one atomic rename."""
    link = work_dir / "model"
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} is not a siloguard model link: move it away, then retry")
    tmp = work_dir / f".model.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("models") / version, tmp)
    os.replace(tmp, link)


def _round_entry(report: RoundReport) -> dict[str, Any]:
    keep = ("ndcg@10", "hr@10", "recall@20", "users")
    return {
        "round": report.server_round,
        "participants": report.participants,
        "rejected": dict(sorted(report.rejected.items())),
        "dropped": sorted(report.dropped),
        "skipped": sorted(report.skipped),
        "model_sha256": report.model_sha256,
        "update_norms": {s: (n if math.isfinite(n) else None) for s, n in sorted(report.update_norms.items())},
        **_finite({k: v for k, v in report.overall.items() if k in keep}),
    }


def save_model(
    model: SharedModel, settings: Settings, reports: dict[int, RoundReport], *, chosen_round: int | None = None
) -> Path:
    """Register the model as a new version (parent: the current one) and make it current.

    ``chosen_round``: the round ``model`` is the global model of (default: the last); its
    metrics are the version's. Returns the version's directory.
    """
    work = settings.work_dir
    folder = _models(work)
    folder.mkdir(parents=True, exist_ok=True)
    _adopt_legacy(work)
    final = reports[chosen_round if chosen_round in reports else max(reports)]
    parent = current_version(work)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        buffer = io.BytesIO()
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buffer)
        write_atomic(staging / MODEL_FILE, buffer.getvalue(), mode=0o600)
        # The public catalogue goes with the model: a store that receives the version scores
        # items by it without any file of the coordinator's.
        catalogue = run_manifest(work).catalogue if (work / "run.json").is_file() else None
        if catalogue is not None and catalogue.is_file():
            shutil.copyfile(catalogue, staging / CATALOGUE_FILE)
        privacy = privacy_summary(settings, reports)
        manifest: dict[str, Any] = {
            "format": "siloguard.model/2",
            "parent": parent,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "siloguard": __version__,
            "sha256": sha256_file(staging / MODEL_FILE),
            "file": MODEL_FILE,
            "shared_parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
            "config": settings.to_run_config(),
            "rounds": len(reports),
            "chosen_round": final.server_round,
            "participants": sorted({s for rep in reports.values() for s in rep.participants}),
            "epsilon_per_store": {s: p["epsilon"] for s, p in sorted(privacy.get("per_store", {}).items())},  # type: ignore[union-attr]
            "privacy": privacy,
            "stores": sorted(final.evaluate),
            "metrics": {
                "overall": _finite(final.overall),
                "per_store": {s: _finite(m) for s, m in sorted(final.evaluate.items())},
            },
            "history": [_round_entry(rep) for _r, rep in sorted(reports.items())],
        }
        existing = [_number(p.name) for p in folder.iterdir() if _VERSION.fullmatch(p.name)]
        number = max(existing, default=0) + 1
        while True:  # another run may register at the same time: take the next free number
            version = f"v{number}"
            manifest["version"] = version
            write_atomic(staging / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
            try:
                os.rename(staging, folder / version)  # fails if that version exists (and holds files)
                break
            except OSError:
                number += 1
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _point_at(work, version)
    return folder / version


def rollback(settings: Settings, version: str, *, actor: str = "operator") -> dict[str, Any]:
    """Make an earlier ``version`` current again, after checking its file, and audit it.

    The audit event is written first: if it cannot be written, nothing changes.
    """
    work = settings.work_dir
    manifest = load_manifest(work, version)
    target = f"v{_number(version)}"
    path = _models(work) / target / MODEL_FILE
    if not path.is_file() or sha256_file(path) != manifest["sha256"]:
        raise DataError(f"model {target}: {path} does not match the sha256 in its manifest; it was changed or removed, do not use it")
    previous = current_version(work)
    from siloguard.audit import AuditEvent, AuditLog
    from siloguard.audit.vocabulary import MODEL_ROLLBACK

    audit = AuditLog.open(settings)
    try:
        audit.append(
            [
                AuditEvent(
                    actor=actor,
                    action=MODEL_ROLLBACK,
                    resource=f"model:{target}",
                    purpose="personalize.profiling",
                    decision="info",
                    reason=f"from-{previous}" if previous else "from-none",
                    counts={"to_version": _number(target), "from_version": _number(previous) if previous else 0,
                            **sha256_counts(manifest["sha256"])},
                )
            ]
        )
    finally:
        audit.close()
    _point_at(work, target)
    return manifest
