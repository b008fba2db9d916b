"""Scores a store can compare: the chance a customer buys a product in the next 28 days.

The federated model ranks a customer's past purchases by its repeat head and every other
product by its collaborative part (:func:`siloguard.recommender.model.score_users`): two
scales (repeat scores of about 4-8, sigmoids of about 0.5) that say nothing comparable. A
store calibrates both on its own history: at a cutoff 28 days before the end of its data it
scores its consenting customers as of that day, sees who bought what in the 28 days after,
and fits one logistic curve per part (Platt scaling, scikit-learn ``LogisticRegression`` on
the raw score). Every score shown to staff, in a recommendation or a campaign list, is that
estimated probability, so "0.31" means the same for a past purchase and a new product.

The calibration runs inside the store on its gated data (the caller passes what the gate
released); only the four coefficients are kept, in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from siloguard.config import Settings
from siloguard.errors import ConfigError, DataError
from siloguard.recommender.features import Catalogue
from siloguard.recommender.model import SharedModel, score_parts

__all__ = ["HORIZON_DAYS", "Calibration", "LoadedModel", "load_model", "probabilities"]

#: The window the probabilities speak of.
HORIZON_DAYS = 28
_NEGATIVE_SAMPLE = 200_000


@dataclass(frozen=True)
class LoadedModel:
    """A model version a store received: parameters, catalogue, product descriptions, version."""

    model: SharedModel
    catalogue: Catalogue
    descriptions: dict[str, str]
    version: str
    path: Path

    @property
    def dim(self) -> int:
        return self.model.dim


def load_model(settings: Settings, model_file: Path | None = None) -> LoadedModel:
    """The model at ``model_file`` (default: the site's ``model/model.pt``) with its catalogue."""
    from siloguard.runs import load_catalogue, run_manifest

    model_file = Path(model_file) if model_file is not None else settings.work_dir / "model" / "model.pt"
    if not model_file.is_file():
        raise ConfigError(f"no model at {model_file}: pass --model (a model.pt the coordinator gave you, with its catalogue.json)")
    catalogue_path = model_file.parent / "catalogue.json"
    if not catalogue_path.is_file():
        catalogue_path = run_manifest(settings.work_dir).require_catalogue()
    catalogue = load_catalogue(catalogue_path)
    try:
        state = torch.load(model_file, weights_only=True)
        dim = state["items.weight"].shape[1]
        hidden = state["repeat.0.weight"].shape[0] if "repeat.0.weight" in state else settings.model.hidden
        model = SharedModel(catalogue.size, dim, hidden)
        # A model from before the text map (no text_in / text_out) scores as it did: the map
        # is set to add nothing.
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys or any(not k.startswith(("text_in.", "text_out.")) for k in result.missing_keys):
            raise KeyError("state dict does not match the model")
        if result.missing_keys:
            with torch.no_grad():
                model.text_in.weight.zero_()
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise ConfigError(f"{model_file} is not a model for its catalogue ({type(exc).__name__}); ask the coordinator for the model again") from None
    model.eval()
    descriptions: dict[str, str] = {}
    try:
        descriptions = {str(k): str(v) for k, v in (json.loads(catalogue_path.read_text()).get("descriptions") or {}).items()}
    except (OSError, ValueError, AttributeError):
        descriptions = {}
    # The public item features the model was trained with, from the same catalogue.
    from siloguard.recommender.item_text import item_text_features

    model.set_item_text(item_text_features(catalogue.codes, descriptions))
    version = "unversioned"
    manifest = model_file.parent / "manifest.json"
    if manifest.is_file():
        try:
            raw = str(json.loads(manifest.read_text())["version"])
            version = raw if raw.startswith("v") else f"v{int(raw)}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return LoadedModel(model, catalogue, descriptions, version, model_file)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


@dataclass(frozen=True)
class Calibration:
    """Two logistic curves: raw repeat score -> probability, raw collaborative logit -> probability."""

    past: tuple[float, float]  # slope, intercept
    new: tuple[float, float]
    examples: int  # customers it was fitted on

    def past_probability(self, raw: np.ndarray) -> np.ndarray:
        return _sigmoid(self.past[0] * raw + self.past[1])

    def new_probability(self, raw: np.ndarray) -> np.ndarray:
        return _sigmoid(self.new[0] * raw + self.new[1])

    @staticmethod
    def _curve(raw: np.ndarray, bought: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
        from sklearn.linear_model import LogisticRegression

        positives = float((bought * weight).sum())
        total = float(weight.sum())
        if len(raw) == 0 or positives == 0 or positives == total:
            # One class only: the base rate, with a tiny slope that keeps the model's order.
            rate = (positives + 0.5) / (total + 1.0)
            return 1e-6, float(np.log(rate / (1 - rate)))
        fit = LogisticRegression(C=1e4, max_iter=1000).fit(raw.reshape(-1, 1), bought, sample_weight=weight)
        slope = float(fit.coef_[0, 0])
        # The model's order within a part is kept: a curve that would reverse it is flattened.
        return (slope, float(fit.intercept_[0])) if slope > 0 else (1e-6, float(fit.intercept_[0]))

    @classmethod
    def fit(cls, loaded: LoadedModel, frame: pd.DataFrame, users_for, *, as_of: pd.Timestamp, seed: int = 0) -> Calibration:
        """Fit on gated transactions ``frame``: score as of ``as_of - 28 days``, label the next 28 days.

        ``users_for(subjects)`` returns the store's private embeddings for those pseudonyms.
        """
        from siloguard.clients.store import build_store

        cutoff = (as_of - pd.Timedelta(days=HORIZON_DAYS)).normalize()
        try:
            data = build_store("calibration", frame, loaded.catalogue, str(cutoff.date()), str(as_of.date()))
        except DataError:
            raise DataError(
                f"the store's data holds no purchase before {cutoff.date()}: a score needs at least "
                f"{HORIZON_DAYS} days of history to be calibrated"
            ) from None
        users = users_for(data.subjects)
        rng = np.random.default_rng(seed)
        past_raw, past_y, new_raw, new_y = [], [], [], []
        truth = data.truth.tocsr()
        for start in range(0, data.n_users, 256):
            rows = np.arange(start, min(start + 256, data.n_users))
            collaborative, repeat, items, mask = score_parts(loaded.model, users, data.history, rows)
            logits = collaborative.numpy()
            real = mask.numpy() > 0
            bought = truth[rows].toarray() > 0
            item_idx = items.numpy()
            local = np.broadcast_to(np.arange(len(rows))[:, None], real.shape)
            past_raw.append(repeat.numpy()[real])
            past_y.append(bought[local[real], item_idx[real]])
            seen = np.zeros_like(bought)
            seen[local[real], item_idx[real]] = True
            new_raw.append(logits[~seen])
            new_y.append(bought[~seen])
        p_raw, p_y = np.concatenate(past_raw), np.concatenate(past_y).astype(int)
        n_raw, n_y = np.concatenate(new_raw), np.concatenate(new_y).astype(int)
        # Every new-item positive, and a weighted sample of the (many) negatives.
        negatives = np.flatnonzero(n_y == 0)
        keep_neg = rng.choice(negatives, size=min(len(negatives), _NEGATIVE_SAMPLE), replace=False) if len(negatives) else negatives
        weight_neg = len(negatives) / max(len(keep_neg), 1)
        keep = np.concatenate([np.flatnonzero(n_y == 1), keep_neg])
        weights = np.where(n_y[keep] == 1, 1.0, weight_neg)
        return cls(
            past=cls._curve(p_raw, p_y, np.ones(len(p_raw))),
            new=cls._curve(n_raw[keep], n_y[keep], weights),
            examples=int(data.n_users),
        )


def probabilities(
    loaded: LoadedModel, calibration: Calibration, users, history, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (len(rows) x items) and a mask of past purchases."""
    collaborative, repeat, items, mask = score_parts(loaded.model, users, history, rows)
    out = calibration.new_probability(collaborative.numpy())
    real = mask.numpy() > 0
    local = np.broadcast_to(np.arange(len(rows))[:, None], real.shape)[real]
    cols = items.numpy()[real]
    past = np.zeros(out.shape, dtype=bool)
    past[local, cols] = True
    out[local, cols] = calibration.past_probability(repeat.numpy()[real])
    return out, past
