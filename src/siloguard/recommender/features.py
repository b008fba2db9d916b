"""Turn a store's purchase log into training examples and scoring inputs.

The recommender predicts what a customer buys in the next ``horizon`` days from
what they bought before a cutoff. For every cutoff we summarise each customer's
history per item (how many baskets held it, how recently) and list what they
bought in the window after the cutoff. Training uses several cutoffs inside the
training period (each one horizon apart), scoring uses the split date itself.

Everything here stays inside the store: the arrays hold store-local user rows,
never leave the client and are never put in a Flower message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "N_FEATURES",
    "Catalogue",
    "Examples",
    "History",
    "build_examples",
    "build_history",
    "to_events",
]

#: Per (customer, item) history features fed to the repeat-purchase head.
N_FEATURES = 6
_DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class Catalogue:
    """The shared product list: stock codes in a fixed order (no personal data)."""

    codes: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.codes)

    def index(self) -> dict[str, int]:
        return {code: i for i, code in enumerate(self.codes)}

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Catalogue:
        return cls(tuple(sorted(frame["stock_code"].astype(str).unique())))


def to_events(frame: pd.DataFrame, catalogue: Catalogue, users: pd.Index | None = None) -> pd.DataFrame:
    """Reduce cleaned transactions to one row per (user row, item, basket).

    ``users`` fixes the order of user rows (store-local, 0..U-1); customers not in
    it and items not in the catalogue are dropped.
    """
    index = catalogue.index()
    item = frame["stock_code"].astype(str).map(index)
    if users is None:
        users = pd.Index(np.sort(frame["customer_id"].unique()))
    user = users.get_indexer(frame["customer_id"])
    keep = item.notna().to_numpy() & (user >= 0)
    days = (frame["invoice_date"].to_numpy() - np.datetime64("1970-01-01")) // _DAY
    events = pd.DataFrame(
        {
            "user": user[keep].astype(np.int64),
            "item": item[keep].to_numpy().astype(np.int64),
            "day": days[keep].astype(np.int64),
            "invoice": frame["invoice"].astype(str).to_numpy()[keep],
        }
    )
    return events.drop_duplicates(["user", "item", "invoice"], ignore_index=True)


@dataclass(frozen=True)
class History:
    """What each user bought before ``cutoff`` (a day number), as sparse rows.

    ``counts`` holds baskets per (user, item); ``features`` holds the
    ``N_FEATURES`` repeat features of every stored entry, aligned with
    ``counts.indices`` (CSR order).
    """

    cutoff: int
    counts: sp.csr_matrix
    features: np.ndarray

    @property
    def n_users(self) -> int:
        return self.counts.shape[0]

    def keys(self) -> np.ndarray:
        """Sorted ``user * n_items + item`` keys of the stored entries."""
        n_items = self.counts.shape[1]
        rows = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.counts.indptr))
        return rows * n_items + self.counts.indices.astype(np.int64)

    def lookup(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and an in-history flag for arbitrary (user, item) pairs."""
        keys = self.keys()
        query = users.astype(np.int64) * self.counts.shape[1] + items.astype(np.int64)
        pos = np.searchsorted(keys, query)
        pos_clipped = np.minimum(pos, max(len(keys) - 1, 0))
        found = (pos < len(keys)) & (keys[pos_clipped] == query) if len(keys) else np.zeros(query.shape, bool)
        feats = np.zeros(query.shape + (N_FEATURES,), dtype=np.float32)
        if len(keys):
            feats[found] = self.features[pos_clipped[found]]
        return feats, found.astype(np.float32)


def build_history(events: pd.DataFrame, n_users: int, n_items: int, cutoff: int) -> History:
    """Summarise events strictly before ``cutoff`` into per-(user, item) features."""
    past = events[events["day"] < cutoff]
    per_item = past.groupby(["user", "item"], sort=True).agg(
        baskets=("invoice", "size"), last=("day", "max"), first=("day", "min")
    )
    per_user = past.groupby("user").agg(user_baskets=("invoice", "nunique"), user_last=("day", "max"))
    joined = per_item.join(per_user, on="user")
    users = joined.index.get_level_values("user").to_numpy()
    items = joined.index.get_level_values("item").to_numpy()
    baskets = joined["baskets"].to_numpy(np.float32)
    since_item = (cutoff - joined["last"].to_numpy()).astype(np.float32)
    since_user = (cutoff - joined["user_last"].to_numpy()).astype(np.float32)
    repeated = baskets > 1
    # Mean days between this customer's baskets holding the item: "is it due again?"
    gap = (joined["last"].to_numpy() - joined["first"].to_numpy()) / np.maximum(baskets - 1, 1)
    due = np.where(repeated, (np.log1p(since_item) - np.log1p(gap.astype(np.float32))) / 3.0, 0.0)
    features = np.stack(
        [
            np.log1p(baskets),
            baskets / joined["user_baskets"].to_numpy(np.float32),
            np.log1p(since_item) / 6.0,
            (np.log1p(since_item) - np.log1p(since_user)) / 6.0,
            due,
            repeated.astype(np.float32),
        ],
        axis=1,
    ).astype(np.float32)
    counts = sp.csr_matrix((baskets, (users, items)), shape=(n_users, n_items))
    counts.sort_indices()
    # CSR order is (user, item) order, which is the groupby order above.
    return History(cutoff=cutoff, counts=counts, features=features)


@dataclass(frozen=True)
class Examples:
    """Training examples: one per (user, cutoff) with at least one target item.

    Candidate lists are padded to a fixed width; ``mask`` marks real entries.
    ``hist_items``/``hist_weights`` give the user's history bag at that cutoff.
    """

    user: np.ndarray  # (E,) store-local user row
    hist_items: np.ndarray  # (E, Lh) int64
    hist_weights: np.ndarray  # (E, Lh) float32, rows sum to 1 (or 0 for empty)
    cand_items: np.ndarray  # (E, Lc) int64
    cand_features: np.ndarray  # (E, Lc, F) float32
    cand_in_hist: np.ndarray  # (E, Lc) float32
    labels: np.ndarray  # (E, Lc) float32
    mask: np.ndarray  # (E, Lc) float32
    cand_logq: np.ndarray  # (E, Lc) float32: log expected count of a sampled candidate (0 if certain)

    def __len__(self) -> int:
        return len(self.user)


def _pad(rows: list[np.ndarray], width: int, dtype: np.dtype, fill: float = 0) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=dtype)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row[:width]
    return out


def build_examples(
    events: pd.DataFrame,
    n_users: int,
    n_items: int,
    cutoffs: list[int],
    horizon: int,
    *,
    max_history: int = 64,
    max_positives: int = 32,
    hard_negatives: int = 32,
    random_negatives: int = 64,
    rng: np.random.Generator,
    proposal: np.ndarray | None = None,
) -> Examples:
    """Build examples for each cutoff: history before it, targets in [cutoff, cutoff+horizon).

    Candidates per example: the target items (positives), items from the user's
    history that were not bought again (hard negatives), and items drawn uniformly
    from the catalogue. Labels say whether a candidate was bought in the window.
    """
    parts: list[dict[str, list[np.ndarray] | np.ndarray]] = []
    if proposal is None:
        proposal = np.full(n_items, 1.0 / n_items)
    proposal = proposal / proposal.sum()
    log_expected = np.log(random_negatives * proposal).astype(np.float32)
    for cutoff in cutoffs:
        history = build_history(events, n_users, n_items, cutoff)
        window = events[(events["day"] >= cutoff) & (events["day"] < cutoff + horizon)]
        targets = window.groupby("user")["item"].unique()
        users, hist_rows, hist_w, cand_rows, logq_rows = [], [], [], [], []
        for user, items in targets.items():
            start, end = history.counts.indptr[user], history.counts.indptr[user + 1]
            h_items = history.counts.indices[start:end]
            h_counts = history.counts.data[start:end]
            if len(h_items) == 0:
                continue  # a first purchase: nothing to personalise from at this cutoff
            if len(h_items) > max_history:
                top = np.argsort(-h_counts, kind="stable")[:max_history]
                h_items, h_counts = h_items[top], h_counts[top]
            weights = np.log1p(h_counts).astype(np.float32)
            weights /= weights.sum()
            pos = np.asarray(items, dtype=np.int64)
            if len(pos) > max_positives:
                pos = rng.choice(pos, max_positives, replace=False)
            hard = np.setdiff1d(h_items, pos)
            if len(hard) > hard_negatives:
                hard = rng.choice(hard, hard_negatives, replace=False)
            rand = rng.choice(n_items, random_negatives, p=proposal)
            cands = np.concatenate([pos, hard, rand])
            users.append(user)
            hist_rows.append(h_items.astype(np.int64))
            hist_w.append(weights)
            cand_rows.append(cands)
            logq_rows.append(np.concatenate([np.zeros(len(pos) + len(hard), np.float32), log_expected[rand]]))
        if not users:
            continue
        width = max_positives + hard_negatives + random_negatives
        cand = _pad(cand_rows, width, np.int64)
        mask = _pad([np.ones(len(c), np.float32) for c in cand_rows], width, np.float32)
        user_arr = np.asarray(users, dtype=np.int64)
        flat_users = np.repeat(user_arr, width)
        feats, in_hist = history.lookup(flat_users, cand.ravel())
        target_keys = np.sort(
            (window["user"].to_numpy(np.int64) * n_items + window["item"].to_numpy(np.int64))
        )
        query = flat_users * n_items + cand.ravel()
        pos_idx = np.minimum(np.searchsorted(target_keys, query), len(target_keys) - 1)
        labels = (target_keys[pos_idx] == query).astype(np.float32).reshape(cand.shape)
        parts.append(
            {
                "user": user_arr,
                "hist_items": _pad(hist_rows, max_history, np.int64),
                "hist_weights": _pad(hist_w, max_history, np.float32),
                "cand_items": cand,
                "cand_features": feats.reshape(cand.shape + (N_FEATURES,)),
                "cand_in_hist": in_hist.reshape(cand.shape),
                "labels": labels * mask,
                "mask": mask,
                "cand_logq": _pad(logq_rows, width, np.float32),
            }
        )
    if not parts:
        width = max_positives + hard_negatives + random_negatives
        return Examples(
            user=np.zeros(0, np.int64),
            hist_items=np.zeros((0, max_history), np.int64),
            hist_weights=np.zeros((0, max_history), np.float32),
            cand_items=np.zeros((0, width), np.int64),
            cand_features=np.zeros((0, width, N_FEATURES), np.float32),
            cand_in_hist=np.zeros((0, width), np.float32),
            labels=np.zeros((0, width), np.float32),
            mask=np.zeros((0, width), np.float32),
            cand_logq=np.zeros((0, width), np.float32),
        )
    return Examples(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})  # type: ignore[arg-type]
