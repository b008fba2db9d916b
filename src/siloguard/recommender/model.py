"""The recommender: shared item knowledge plus each customer's own history.

Scores of every catalogue item ``i`` for customer ``u`` at a cutoff::

    s(u, .) = D(p_u + sum_j w_uj c_j)                            collaborative part
    s(u, j) += r_j + g(features(u, j))   for each j in history(u)   repeat part

    c_j = e_j + A x_j        D_i = f_i + B x_i   (bias b_i + x_i . v)

* ``x_j`` are fixed features of product ``j`` from the public catalogue (its description and
  stock code, :mod:`siloguard.recommender.item_text`): a buffer computed by every party from
  the catalogue, not in the state dict; ``A`` (``text_in``) and ``B`` with ``v``
  (``text_out``) are the small shared map from those features (2 x 64 x dim + 64 numbers), the
  part of the collaborative ranker that is trained under DP; ``e_j`` and ``f_i`` are free
  per-item vectors, trained without DP only;
* ``c_j`` (context vector) and ``r_j`` (repeat bias) live in one item table,
  ``SharedModel.items`` (columns ``[c | r]``), looked up once per forward pass on
  the customer's history bag (Opacus ghost clipping refuses a layer called twice);
* ``D`` is a linear decoder to the whole catalogue (weights = target vectors,
  bias = item popularity), so training and scoring rank **all** items with one
  softmax, exactly as evaluation does;
* ``g`` is the repeat head: a small MLP plus a linear skip over the
  per-(customer, item) history features (baskets, share, recency, "due again");
  its linear skip starts at ``2 * log1p(baskets) + 3``, so an untrained model
  already ranks like personal frequency;
* ``w_uj`` weighs the history bag; ``p_u`` is the customer's private embedding
  (:class:`PrivateUsers`), which stays in the store's client state.

Only :class:`SharedModel`'s parameters travel to the coordinator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from siloguard.recommender.features import N_FEATURES, POPULARITY_FEATURE, Bags, History, history_bags
from siloguard.recommender.item_text import TEXT_DIM

__all__ = [
    "PAST_PURCHASE_OFFSET",
    "REPEAT_PREFIX",
    "POPULARITY_PRIOR",
    "item_customers",
    "REPEAT_INIT_BIAS",
    "REPEAT_INIT_SLOPE",
    "PrivateUsers",
    "SharedModel",
    "bag_tensors",
    "score_parts",
    "score_users",
]

#: Weight of the store's log1p(customers) per item in the collaborative logits (fixed).
POPULARITY_PRIOR = 1.0
#: Warm start of the repeat head's linear skip: slope on log1p(baskets), offset.
REPEAT_INIT_SLOPE = 2.0
REPEAT_INIT_BIAS = 3.0
#: ...and a small weight on the item's popularity in the store, which breaks ties
#: between equally often bought items (so an untrained model ranks past purchases
#: exactly like personal frequency).
REPEAT_INIT_POPULARITY = 0.1


class SharedModel(nn.Module):
    """Parameters shared across stores (and only these are ever sent)."""

    def __init__(
        self,
        n_items: int,
        dim: int = 32,
        hidden: int = 16,
        seed: int = 0,
        item_text: np.ndarray | torch.Tensor | None = None,
        text_dim: int = TEXT_DIM,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.n_items = n_items
        self.dim = dim
        self.items = nn.Embedding(n_items, dim)
        self.repeat_items = nn.Embedding(n_items, 1)
        self.decoder = nn.Linear(dim, n_items)
        # Fixed inputs, not persistent (never in a message or a model file): the public item
        # features every party computes from the catalogue (None: zeros, the text map then adds
        # nothing), and the store's own popularity prior on new items, log1p(its customers who
        # bought the item), which each store sets from its own data (set_store_popularity).
        self.text_dim = text_dim
        self.register_buffer("item_text", torch.zeros(n_items, text_dim), persistent=False)
        self.register_buffer("store_prior", torch.zeros(n_items), persistent=False)
        # Under DP the repeat ranker's item-popularity feature comes from the same released
        # counts as the prior (``set_store_popularity(..., released=True)``), not from the
        # store's raw counts: a raw count makes one customer's gradient depend on the others'.
        # NaN: not set, the history's own feature is used (without DP).
        self.register_buffer("repeat_popularity", torch.full((n_items,), float("nan")), persistent=False)
        if item_text is not None:
            self.set_item_text(item_text)
        self.text_in = nn.Linear(text_dim, dim, bias=False)
        self.text_out = nn.Linear(dim, text_dim)
        self.repeat = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.repeat_linear = nn.Linear(N_FEATURES, 1)
        with torch.no_grad():
            self.items.weight.normal_(0.0, 0.05, generator=gen)
            self.repeat_items.weight.zero_()
            self.decoder.weight.normal_(0.0, 0.05, generator=gen)
            self.decoder.bias.zero_()
            self.text_in.weight.normal_(0.0, 0.05, generator=gen)
            self.text_out.weight.zero_()
            self.text_out.bias.zero_()
            for layer in self.repeat:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, 0.1, generator=gen)
                    layer.bias.zero_()
            self.repeat_linear.weight.zero_()
            self.repeat_linear.weight[0, 0] = REPEAT_INIT_SLOPE
            self.repeat_linear.weight[0, POPULARITY_FEATURE] = REPEAT_INIT_POPULARITY
            self.repeat_linear.bias.fill_(REPEAT_INIT_BIAS)

    def fresh_copy(self) -> SharedModel:
        """The same parameters and fixed inputs in new modules (no hooks a DP run left on these)."""
        hidden = self.repeat[0].out_features
        out = SharedModel(self.n_items, self.dim, hidden, text_dim=self.text_dim)
        out.load_state_dict(self.state_dict())
        out.item_text.copy_(self.item_text)
        out.store_prior.copy_(self.store_prior)
        out.repeat_popularity.copy_(self.repeat_popularity)
        return out

    def set_item_text(self, features: np.ndarray | torch.Tensor) -> None:
        """Use these public item features (``n_items x text_dim``)."""
        x = torch.as_tensor(np.asarray(features, np.float32))
        if tuple(x.shape) != (self.n_items, self.text_dim):
            raise ValueError(f"item features of shape {tuple(x.shape)} do not fit the model's {(self.n_items, self.text_dim)}")
        with torch.no_grad():
            self.item_text.copy_(x)

    def set_store_popularity(self, customers: np.ndarray, *, released: bool = False) -> None:
        """The store's own prior on new items: ``log1p`` of its customers who bought each item,
        added to the collaborative logits (so an untrained model ranks new items by the store's
        popularity, and training learns what to add to it). Fixed, not trained: no gradient
        reaches it, under DP no clipping budget or noise is spent on it. Computed in the store
        from its own data and kept there (not in the state dict, never sent).

        ``released``: the counts are a DP release (privacy/popularity.py); the repeat ranker's
        item-popularity feature is then taken from them too (``log1p`` scaled to [0, 1]), in
        training and in scoring, instead of the history's raw count."""
        c = np.asarray(customers, np.float64)
        if c.shape != (self.n_items,) or (c < 0).any():
            raise ValueError(f"store popularity must be {self.n_items} non-negative counts")
        with torch.no_grad():
            self.store_prior.copy_(torch.from_numpy(POPULARITY_PRIOR * np.log1p(c)).float())
            if released:
                scaled = np.log1p(c) / np.log1p(max(float(c.max(initial=0.0)), 1.0))
                self.repeat_popularity.copy_(torch.from_numpy(scaled).float())
            else:
                self.repeat_popularity.fill_(float("nan"))

    def collaborative_parameters(self) -> list[nn.Parameter]:
        return [*self.items.parameters(), *self.decoder.parameters(), *self.text_parameters()]

    def text_parameters(self) -> list[nn.Parameter]:
        """The map from public item features: what the collaborative ranker trains under DP."""
        return [*self.text_in.parameters(), *self.text_out.parameters()]

    def item_logits(self, profile: torch.Tensor) -> torch.Tensor:
        """Collaborative logits over the catalogue of profiles (..., dim) -> (..., n_items)."""
        return self.decoder(profile) + self.text_out(profile) @ self.item_text.T + self.store_prior

    def text_profile(self, items: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``A sum_j w_j x_j`` of history bags (..., L) -> (..., dim)."""
        return self.text_in((weights.unsqueeze(-1) * self.item_text[items]).sum(-2))

    def repeat_parameters(self) -> list[nn.Parameter]:
        return [*self.repeat_items.parameters(), *self.repeat.parameters(), *self.repeat_linear.parameters()]

    def forward(
        self,
        user_vec: torch.Tensor,  # (B, dim) private user embeddings (zeros if none)
        items: torch.Tensor,  # (B, L) history bag
        weights: torch.Tensor,  # (B, L)
        features: torch.Tensor,  # (B, L, F)
        mask: torch.Tensor,  # (B, L)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Collaborative logits over the catalogue (B, n_items) and repeat scores of the bag (B, L)."""
        context = self.items(items)  # each embedding layer is called once per pass
        profile = (weights.unsqueeze(-1) * context).sum(1) + self.text_profile(items, weights) + user_vec
        collaborative = self.item_logits(profile)
        return collaborative, self.repeat_scores(items, features, mask)

    def repeat_scores(self, items: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The repeat ranker's scores of history bags (B, L): ``r_j + g(features)``, 0 on padding."""
        repeat_bias = self.repeat_items(items).squeeze(-1)
        features = self.repeat_features(items, features)
        return (repeat_bias + (self.repeat(features) + self.repeat_linear(features)).squeeze(-1)) * mask

    def own_repeat_state(self, part: str) -> dict[str, torch.Tensor]:
        """The parameters a DP store keeps as its own (``PrivacySettings.own_repeat``): the whole
        repeat ranker (``"all"``) or its per-item biases (``"items"``)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if _own_repeat_key(k, part)}

    def load_own_repeat(self, state: dict[str, torch.Tensor], part: str) -> None:
        """Load of ``state`` only what a store keeps as ``part``: a state that kept more (the whole
        ranker, then the head shared) never puts a stale head over the shared one."""
        self.load_state_dict({**self.state_dict(), **{k: v for k, v in state.items() if _own_repeat_key(k, part)}})

    def repeat_features(self, items: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The history features with the item-popularity column from the released counts, if set."""
        if torch.isnan(self.repeat_popularity[:1]).any():
            return features
        column = self.repeat_popularity[items].unsqueeze(-1)
        return torch.cat([features[..., :POPULARITY_FEATURE], column, features[..., POPULARITY_FEATURE + 1 :]], -1)


#: The repeat ranker's parameters in the state dict (repeat_items, repeat.*, repeat_linear.*).
REPEAT_PREFIX = "repeat"


def _own_repeat_key(name: str, part: str) -> bool:
    return name == "repeat_items.weight" if part == "items" else name.startswith(REPEAT_PREFIX)


class PrivateUsers(nn.Module):
    """Per-customer embeddings of one store; kept in the store, never sent."""

    def __init__(self, n_users: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 1)
        self.weight = nn.Parameter(torch.empty(n_users, dim).normal_(0.0, 0.01, generator=gen))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.weight[users]


def item_customers(history: History) -> np.ndarray:
    """How many of the store's customers bought each item in ``history`` (for set_store_popularity)."""
    return np.asarray((history.counts > 0).sum(axis=0), np.float64).ravel()


def bag_tensors(bags: Bags, idx: np.ndarray | slice) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(bags.user[idx]),
        torch.from_numpy(bags.items[idx]),
        torch.from_numpy(bags.weights[idx]),
        torch.from_numpy(bags.features[idx]),
        torch.from_numpy(bags.mask[idx]),
    )


@torch.no_grad()
def score_parts(
    model: SharedModel,
    users: PrivateUsers | None,
    history: History,
    rows: np.ndarray,
    *,
    max_history: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collaborative logits (len(rows) x n_items), repeat scores and bag items of the rows."""
    model.eval()
    bags = history_bags(history, np.asarray(rows), max_history)
    user_idx, items, weights, features, mask = bag_tensors(bags, slice(None))
    user_vec = users(user_idx) if users is not None else torch.zeros(len(rows), model.dim)
    collaborative, repeat = model.forward(user_vec, items, weights, features, mask)
    return collaborative, repeat, items, mask


def score_users(
    model: SharedModel,
    users: PrivateUsers | None,
    history: History,
    rows: np.ndarray,
    *,
    max_history: int = 256,
) -> np.ndarray:
    """Full-ranking scores (len(rows) x n_items) for store-local user rows.

    Past purchases come first, ordered by the repeat head; the other items follow,
    ordered by the collaborative part. (A store-side search over blends of the two
    on a held-out window always chose this order on Online Retail: new items did
    not earn a top-10 place over a past purchase; see docs/MODEL.md.)
    """
    collaborative, repeat, items, mask = score_parts(model, users, history, rows, max_history=max_history)
    scores = torch.sigmoid(collaborative).numpy().copy()  # in (0, 1)
    real = mask.numpy() > 0
    rows_idx = np.broadcast_to(np.arange(len(scores))[:, None], real.shape)[real]
    scores[rows_idx, items.numpy()[real]] = PAST_PURCHASE_OFFSET + repeat.numpy()[real]
    return scores


#: Puts every past purchase above every new item (repeat scores stay far below it).
PAST_PURCHASE_OFFSET = 1.0e4
