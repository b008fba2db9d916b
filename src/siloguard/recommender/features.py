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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "N_FEATURES",
    "POPULARITY_FEATURE",
    "Bags",
    "Catalogue",
    "Examples",
    "History",
    "build_examples",
    "build_history",
    "customer_history",
    "history_features",
    "history_bags",
    "to_events",
]

#: Per (customer, item) history features fed to the repeat-purchase head.
N_FEATURES = 7
#: Index of the store-level item popularity among the features.
POPULARITY_FEATURE = 6
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


def history_features(
    baskets: np.ndarray, last: np.ndarray, first: np.ndarray, user_baskets: np.ndarray, user_last: np.ndarray,
    popularity: np.ndarray, cutoff: int,
) -> np.ndarray:
    """The ``N_FEATURES`` repeat features of (customer, item) entries, one row each."""
    baskets = np.asarray(baskets, np.float32)
    since_item = (cutoff - np.asarray(last)).astype(np.float32)
    since_user = (cutoff - np.asarray(user_last)).astype(np.float32)
    repeated = baskets > 1
    # Mean days between this customer's baskets holding the item: "is it due again?"
    gap = (np.asarray(last) - np.asarray(first)) / np.maximum(baskets - 1, 1)
    due = np.where(repeated, (np.log1p(since_item) - np.log1p(gap.astype(np.float32))) / 3.0, 0.0)
    return np.stack(
        [
            np.log1p(baskets),
            baskets / np.asarray(user_baskets, np.float32),
            np.log1p(since_item) / 6.0,
            (np.log1p(since_item) - np.log1p(since_user)) / 6.0,
            due,
            repeated.astype(np.float32),
            popularity,
        ],
        axis=1,
    ).astype(np.float32)


def customer_history(
    items: np.ndarray, days: np.ndarray, invoices: np.ndarray, n_items: int, cutoff: int, popularity: np.ndarray
) -> History:
    """One customer's history (a single user row) from their purchase lines, without pandas.

    The same features as :func:`build_history` for that customer, with ``popularity`` (per
    catalogue item, as build_history computes it over the store) given: serving one customer
    at a time must not cost a pandas group-by (tens of ms) per call.
    """
    items = np.asarray(items, np.int64)
    days = np.asarray(days, np.int64)
    keep = (days < cutoff) & (items >= 0)
    items, days = items[keep], days[keep]
    invoice_ids = np.unique(np.asarray(invoices)[keep], return_inverse=True)[1].astype(np.int64)
    # one event per (item, invoice), the first line's day, as to_events keeps
    _, first_line = np.unique(items * (int(invoice_ids.max(initial=0)) + 1) + invoice_ids, return_index=True)
    ev_items, ev_days, ev_invoices = items[first_line], days[first_line], invoice_ids[first_line]
    held, which = np.unique(ev_items, return_inverse=True)
    baskets = np.bincount(which, minlength=len(held)).astype(np.float32)
    last = np.full(len(held), np.iinfo(np.int64).min, np.int64)
    first = np.full(len(held), np.iinfo(np.int64).max, np.int64)
    np.maximum.at(last, which, ev_days)
    np.minimum.at(first, which, ev_days)
    n = len(held)
    features = history_features(
        baskets, last, first, np.full(n, len(np.unique(ev_invoices)), np.float32),
        np.full(n, ev_days.max() if n else cutoff), np.asarray(popularity)[held], cutoff,
    )
    counts = sp.csr_matrix((baskets, (np.zeros(n, np.int64), held)), shape=(1, n_items))
    counts.sort_indices()
    return History(cutoff=cutoff, counts=counts, features=features.reshape(n, -1) if n else np.zeros((0, N_FEATURES), np.float32))


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
    # How many of the store's customers bought the item (a store-level count):
    # breaks ties between items a customer bought equally often, as popularity
    # breaks them in "personal frequency".
    item_customers = np.bincount(items, minlength=n_items)
    popularity = np.log1p(item_customers[items]) / np.log1p(max(n_users, 1))
    features = history_features(
        baskets, joined["last"].to_numpy(), joined["first"].to_numpy(), joined["user_baskets"].to_numpy(np.float32),
        joined["user_last"].to_numpy(), popularity, cutoff,
    )
    counts = sp.csr_matrix((baskets, (users, items)), shape=(n_users, n_items))
    counts.sort_indices()
    # CSR order is (user, item) order, which is the groupby order above.
    return History(cutoff=cutoff, counts=counts, features=features)


@dataclass(frozen=True)
class Bags:
    """Each row's history bag at a cutoff, padded to a fixed width.

    ``items`` are the customer's past items (the most-bought first, at most the
    width), ``weights`` their normalised log-counts (0 on padding), ``features``
    the repeat features and ``mask`` 1 on real entries.
    """

    user: np.ndarray  # (E,) store-local user row
    items: np.ndarray  # (E, L) int64
    weights: np.ndarray  # (E, L) float32
    features: np.ndarray  # (E, L, F) float32
    mask: np.ndarray  # (E, L) float32

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class Examples:
    """Training examples: a history bag and the items bought in the next window."""

    bags: Bags
    targets: np.ndarray  # (E, T) int64, padded
    target_mask: np.ndarray  # (E, T) float32
    copurchase: np.ndarray  # (E,) bool: a hidden-history example (see build_holdout_examples)

    def __len__(self) -> int:
        return len(self.bags)


def bag_weights(counts: np.ndarray) -> np.ndarray:
    """How much each past item shapes the customer's collaborative profile.

    Log baskets, L2-normalised: a long history is not averaged into mush (with
    sum-normalised weights NDCG@10 on new items was 0.085, with L2 0.088-0.093;
    docs/MODEL.md).
    """
    w = np.log1p(counts)
    return (w / np.sqrt((w * w).sum())).astype(np.float32)


def history_bags(history: History, rows: np.ndarray, width: int) -> Bags:
    """History bags of the given user rows (vectorised; rows may be empty of history)."""
    counts = history.counts
    n = len(rows)
    items = np.zeros((n, width), np.int64)
    weights = np.zeros((n, width), np.float32)
    feats = np.zeros((n, width, N_FEATURES), np.float32)
    mask = np.zeros((n, width), np.float32)
    for r, user in enumerate(rows):
        start, end = counts.indptr[user], counts.indptr[user + 1]
        if end == start:
            continue
        c = counts.data[start:end]
        order = np.argsort(-c, kind="stable")[:width]
        k = len(order)
        items[r, :k] = counts.indices[start:end][order]
        feats[r, :k] = history.features[start:end][order]
        weights[r, :k] = bag_weights(c[order])
        mask[r, :k] = 1.0
    return Bags(user=np.asarray(rows, np.int64), items=items, weights=weights, features=feats, mask=mask)


def build_examples(
    events: pd.DataFrame,
    n_users: int,
    n_items: int,
    cutoffs: list[int],
    horizon: int,
    *,
    max_history: int = 256,
    max_targets: int = 64,
    rng: np.random.Generator,
    history_at: Callable[[int], History] | None = None,
) -> Examples:
    """One example per (user, cutoff) with history before and purchases in the window after.

    Customers with no history at a cutoff (first purchases) are skipped: there is
    nothing in the store to personalise from. ``history_at(cutoff)``, if given, stands for
    ``build_history(events, n_users, n_items, cutoff)`` (e.g. kept from an earlier round).
    """
    bags: list[Bags] = []
    target_rows: list[np.ndarray] = []
    for cutoff in cutoffs:
        history = history_at(cutoff) if history_at is not None else build_history(events, n_users, n_items, cutoff)
        window = events[(events["day"] >= cutoff) & (events["day"] < cutoff + horizon)]
        targets = window.groupby("user")["item"].unique()
        has_history = np.diff(history.counts.indptr) > 0
        users = np.asarray([u for u in targets.index if has_history[u]], dtype=np.int64)
        if len(users) == 0:
            continue
        bags.append(history_bags(history, users, max_history))
        for u in users:
            t = np.asarray(targets[u], dtype=np.int64)
            if len(t) > max_targets:
                t = rng.choice(t, max_targets, replace=False)
            target_rows.append(t)
    if not bags:
        empty = Bags(
            user=np.zeros(0, np.int64),
            items=np.zeros((0, max_history), np.int64),
            weights=np.zeros((0, max_history), np.float32),
            features=np.zeros((0, max_history, N_FEATURES), np.float32),
            mask=np.zeros((0, max_history), np.float32),
        )
        return Examples(
            empty, np.zeros((0, max_targets), np.int64), np.zeros((0, max_targets), np.float32), np.zeros(0, bool)
        )
    merged = Bags(**{f: np.concatenate([getattr(b, f) for b in bags]) for f in ("user", "items", "weights", "features", "mask")})
    targets_arr = np.zeros((len(target_rows), max_targets), np.int64)
    target_mask = np.zeros((len(target_rows), max_targets), np.float32)
    for r, t in enumerate(target_rows):
        targets_arr[r, : len(t)] = t
        target_mask[r, : len(t)] = 1.0
    return Examples(merged, targets_arr, target_mask, np.zeros(len(targets_arr), bool))


def build_holdout_examples(
    history: History,
    *,
    holdout: float,
    max_history: int = 256,
    max_targets: int = 64,
    rng: np.random.Generator,
) -> Examples:
    """Co-purchase examples: hide part of each customer's history, predict it from the rest.

    The hidden items are new with respect to the visible bag, so these examples
    teach the collaborative part which products go together (the signal matrix
    factorisation learns from), many more of them than the next-window examples.
    """
    counts = history.counts
    sizes = np.diff(counts.indptr)
    users = np.flatnonzero(sizes >= 2)
    items = np.zeros((len(users), max_history), np.int64)
    weights = np.zeros((len(users), max_history), np.float32)
    feats = np.zeros((len(users), max_history, N_FEATURES), np.float32)
    mask = np.zeros((len(users), max_history), np.float32)
    targets = np.zeros((len(users), max_targets), np.int64)
    target_mask = np.zeros((len(users), max_targets), np.float32)
    for r, user in enumerate(users):
        start, end = counts.indptr[user], counts.indptr[user + 1]
        n = end - start
        hide = rng.random(n) < holdout
        if hide.all() or not hide.any():
            hide[:] = False
            hide[rng.integers(n)] = True
        shown = np.flatnonzero(~hide)
        c = counts.data[start:end][shown]
        order = shown[np.argsort(-c, kind="stable")[:max_history]]
        k = len(order)
        items[r, :k] = counts.indices[start:end][order]
        feats[r, :k] = history.features[start:end][order]
        weights[r, :k] = bag_weights(counts.data[start:end][order])
        mask[r, :k] = 1.0
        hidden = counts.indices[start:end][hide]
        if len(hidden) > max_targets:
            hidden = rng.choice(hidden, max_targets, replace=False)
        targets[r, : len(hidden)] = hidden
        target_mask[r, : len(hidden)] = 1.0
    bags = Bags(user=users.astype(np.int64), items=items, weights=weights, features=feats, mask=mask)
    return Examples(bags, targets, target_mask, np.ones(len(users), bool))


def concat_examples(*parts: Examples) -> Examples:
    """Stack examples built with the same widths."""
    fields = ("user", "items", "weights", "features", "mask")
    bags = Bags(**{f: np.concatenate([getattr(p.bags, f) for p in parts]) for f in fields})
    return Examples(
        bags,
        np.concatenate([p.targets for p in parts]),
        np.concatenate([p.target_mask for p in parts]),
        np.concatenate([p.copurchase for p in parts]),
    )
