"""The recommender: shared item knowledge plus each customer's own history.

Score of item ``i`` for customer ``u`` at a cutoff::

    s(u, i) = b_i + <p_u + sum_j w_uj q_j, q_i>                 collaborative part
            + [i in history(u)] * (r_i + g(features(u, i)))      repeat part

* ``q_i``, ``b_i``, ``r_i`` live in one item table (``SharedModel.items``, columns
  ``[q (dim) | b | r]``) so a forward pass calls the embedding once, on the
  concatenation of history and candidate indices (Opacus ghost clipping refuses a
  layer called twice in one forward);
* ``g`` is a small MLP over the per-(customer, item) history features
  (baskets, share of baskets, recency): how likely a past purchase is repeated;
* ``p_u`` is the customer's private embedding (``PrivateUsers``): it lives in the
  store's client state and is never sent anywhere. ``w_uj`` weighs the
  customer's history bag (log-counts, normalised); the bag itself stays in the
  store too.

Only ``SharedModel``'s parameters travel to the coordinator and are averaged.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from siloguard.recommender.features import N_FEATURES, History

__all__ = ["PrivateUsers", "SharedModel", "score_users"]


#: Warm start of the repeat head (log1p(baskets) slope and offset), see SharedModel.
REPEAT_INIT_SLOPE = 2.0
REPEAT_INIT_BIAS = 3.0


class SharedModel(nn.Module):
    """Parameters shared across stores (and only these are ever sent)."""

    def __init__(self, n_items: int, dim: int = 32, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.n_items = n_items
        self.dim = dim
        self.items = nn.Embedding(n_items, dim + 2)
        with torch.no_grad():
            self.items.weight.normal_(0.0, 0.05, generator=gen)
            self.items.weight[:, dim:] = 0.0
        self.repeat = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.repeat_linear = nn.Linear(N_FEATURES, 1)
        with torch.no_grad():
            for layer in self.repeat:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, 0.3, generator=gen)
                    layer.bias.zero_()
            # Warm start at "personal frequency": a past purchase outranks any
            # unbought item, more baskets rank higher. Training moves from there.
            self.repeat_linear.weight.zero_()
            self.repeat_linear.weight[0, 0] = REPEAT_INIT_SLOPE
            self.repeat_linear.bias.fill_(REPEAT_INIT_BIAS)

    def repeat_score(self, features: torch.Tensor) -> torch.Tensor:
        return (self.repeat(features) + self.repeat_linear(features)).squeeze(-1)

    def forward(
        self,
        user_vec: torch.Tensor,  # (B, dim): private user embeddings of the batch
        hist_items: torch.Tensor,  # (B, Lh)
        hist_weights: torch.Tensor,  # (B, Lh)
        cand_items: torch.Tensor,  # (B, Lc)
        cand_features: torch.Tensor,  # (B, Lc, F)
        cand_in_hist: torch.Tensor,  # (B, Lc)
    ) -> torch.Tensor:
        lh = hist_items.shape[1]
        table = self.items(torch.cat([hist_items, cand_items], dim=1))
        hist, cand = table[:, :lh, : self.dim], table[:, lh:]
        profile = (hist_weights.unsqueeze(-1) * hist).sum(1) + user_vec
        collaborative = (cand[..., : self.dim] * profile.unsqueeze(1)).sum(-1)
        repeat = cand[..., self.dim + 1] + self.repeat_score(cand_features)
        return collaborative + cand[..., self.dim] + cand_in_hist * repeat


class PrivateUsers(nn.Module):
    """Per-customer embeddings of one store; kept in the store, never sent."""

    def __init__(self, n_users: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 1)
        self.weight = nn.Parameter(torch.empty(n_users, dim).normal_(0.0, 0.01, generator=gen))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.weight[users]


@torch.no_grad()
def score_users(
    model: SharedModel,
    users: PrivateUsers | None,
    history: History,
    rows: np.ndarray,
) -> np.ndarray:
    """Full-ranking scores (len(rows) x n_items) for store-local user rows."""
    model.eval()
    table = model.items.weight
    q, b, r = table[:, : model.dim], table[:, model.dim], table[:, model.dim + 1]
    counts = history.counts[rows]
    weights = counts.copy()
    weights.data = np.log1p(weights.data)
    sums = np.asarray(weights.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    weights = sp.diags(1.0 / sums) @ weights
    profile = torch.from_numpy(np.asarray((weights @ q.numpy()), dtype=np.float32))
    if users is not None:
        profile = profile + users.weight[torch.from_numpy(rows.astype(np.int64))]
    scores = profile @ q.T + b
    # Repeat part on the entries each customer bought before.
    sub_rows = np.repeat(np.arange(len(rows)), np.diff(counts.indptr))
    items = counts.indices
    feats, _ = history.lookup(rows[sub_rows], items)
    rep = r[items] + model.repeat_score(torch.from_numpy(feats))
    scores[torch.from_numpy(sub_rows), torch.from_numpy(items.astype(np.int64))] += rep
    return scores.numpy()
