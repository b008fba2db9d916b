"""Local training of the recommender on one store's examples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from siloguard.recommender.features import Examples
from siloguard.recommender.model import PrivateUsers, SharedModel

__all__ = ["TrainResult", "example_loss", "train_local"]


@dataclass(frozen=True)
class TrainResult:
    examples: int
    steps: int
    loss: float


def example_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example loss (shape (B,)) over a padded candidate list.

    ``bce``: mean binary cross-entropy over real candidates.
    ``softmax``: sampled softmax; each positive competes with all negatives of its
    example (mean over positives). Padding never contributes.
    """
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * mask
        return per.sum(1) / mask.sum(1).clamp_min(1.0)
    if kind == "softmax":
        neg_inf = torch.finfo(logits.dtype).min
        neg = torch.where((mask > 0) & (labels == 0), logits, torch.full_like(logits, neg_inf))
        neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)  # (B, 1)
        per_pos = F.softplus(neg_lse - logits)  # -log sigmoid(s_p - lse(neg)) = -log(e^sp / (e^sp + sum e^sn))
        pos = labels * mask
        return (per_pos * pos).sum(1) / pos.sum(1).clamp_min(1.0)
    raise ValueError(f"unknown loss {kind!r}: use 'bce' or 'softmax'")


def _batch(ex: Examples, idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "users": torch.from_numpy(ex.user[idx]),
        "hist_items": torch.from_numpy(ex.hist_items[idx]),
        "hist_weights": torch.from_numpy(ex.hist_weights[idx]),
        "cand_items": torch.from_numpy(ex.cand_items[idx]),
        "cand_features": torch.from_numpy(ex.cand_features[idx]),
        "cand_in_hist": torch.from_numpy(ex.cand_in_hist[idx]),
        "labels": torch.from_numpy(ex.labels[idx]),
        "mask": torch.from_numpy(ex.mask[idx]),
        "cand_logq": torch.from_numpy(ex.cand_logq[idx]),
    }


def train_local(
    model: SharedModel,
    users: PrivateUsers,
    examples: Examples,
    *,
    epochs: int,
    lr: float,
    user_lr: float,
    batch_size: int,
    weight_decay: float,
    loss: str,
    seed: int,
) -> TrainResult:
    """Train shared and private parameters on one store's examples (plain SGD)."""
    n = len(examples)
    if n == 0:
        return TrainResult(examples=0, steps=0, loss=float("nan"))
    model.train()
    opt = torch.optim.Adam(
        [
            {"params": model.parameters(), "lr": lr, "weight_decay": weight_decay},
            {"params": users.parameters(), "lr": user_lr, "weight_decay": 0.0},
        ]
    )
    rng = np.random.default_rng(seed)
    steps, total = 0, 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            b = _batch(examples, order[start : start + batch_size])
            logits = model(
                users(b["users"]),
                b["hist_items"],
                b["hist_weights"],
                b["cand_items"],
                b["cand_features"],
                b["cand_in_hist"],
            )
            # Sampled-softmax correction: a candidate drawn from the proposal is
            # discounted by its expected count, so training matches full ranking.
            logits = logits - b["cand_logq"]
            value = example_loss(logits, b["labels"], b["mask"], loss).mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            steps += 1
            total += float(value.detach())
    return TrainResult(examples=n, steps=steps, loss=total / max(steps, 1))
