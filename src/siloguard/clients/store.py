"""One store's local view: its silo, its customers, its histories and test truth.

A ``StoreData`` is built inside the store (the Flower ClientApp) from the store's
own transaction file. Nothing in it is ever sent: the client sends only the
shared model's arrays and aggregate counts/metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from siloguard.config import ModelSettings
from siloguard.data.loader import load_clean
from siloguard.errors import DataError
from siloguard.recommender.features import (
    Catalogue,
    Examples,
    History,
    build_examples,
    build_holdout_examples,
    concat_examples,
    build_history,
    to_events,
)
from siloguard.recommender.metrics import overall_metrics, ranking_metrics  # overall_metrics: re-exported (bench)
from siloguard.recommender.model import PrivateUsers, SharedModel, score_users
# Shared with every reader of a run (re-exported: the store's modules and tools import them here).
from siloguard.runs import load_catalogue, run_manifest, save_catalogue

__all__ = ["StoreData", "build_store", "evaluate_rows", "run_manifest", "evaluate_store", "load_catalogue", "load_store", "save_catalogue"]

_EPOCH = pd.Timestamp("1970-01-01")


def day_number(ts: pd.Timestamp) -> int:
    return int((pd.Timestamp(ts).normalize() - _EPOCH).days)


@dataclass(frozen=True)
class StoreData:
    """A store's training events and evaluation truth, in store-local user rows."""

    name: str
    n_users: int
    n_items: int
    split_day: int
    horizon: int
    events: pd.DataFrame  # training events (user, item, day, invoice)
    history: History  # everything before the split: what scoring personalises from
    truth: sp.csr_matrix  # items bought in the test period (users x items)
    subjects: pd.Index  # who each user row is: customer ids, or the gate's pseudonyms in a client
    #: the store's erasure mark when a node gated the data (clients.private.erasure_mark); None: not gated
    erasures: str | None = None

    def examples(self, settings: ModelSettings, rng: np.random.Generator) -> Examples:
        """Training examples at cutoffs ``stride`` days apart inside the training period."""
        stride = settings.cutoff_stride_days or self.horizon
        cutoffs = [self.split_day - self.horizon - stride * k for k in range(settings.cutoffs)]
        window = build_examples(
            self.events,
            self.n_users,
            self.n_items,
            cutoffs,
            self.horizon,
            max_history=settings.max_history,
            rng=rng,
            history_at=self.history_at,
        )
        if settings.holdout <= 0:
            return window
        copurchase = build_holdout_examples(
            self.history, holdout=settings.holdout, max_history=settings.max_history, rng=rng
        )
        return concat_examples(window, copurchase)

    @cached_property
    def validation(self) -> tuple[History, sp.csr_matrix]:
        """The last horizon before the split, inside the training period: (history before it,
        items bought in it). What a round is judged on without touching the test window; the
        training examples' latest cutoff sees the same window, so it measures fit, not a holdout."""
        cutoff = self.split_day - self.horizon
        window = self.events[self.events["day"] >= cutoff]
        truth = sp.csr_matrix(
            (np.ones(len(window), np.float32), (window["user"].to_numpy(), window["item"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )
        truth.sum_duplicates()
        truth.data[:] = 1.0
        return self.history_at(cutoff), truth

    @cached_property
    def _histories(self) -> dict[int, History]:
        return {}

    def history_at(self, cutoff: int) -> History:
        """``build_history`` at ``cutoff``, built once per store data: every round's training
        examples (and its validation) look at the same cutoffs of the same events, and
        rebuilding them took about a tenth of a small store's round in a profile."""
        held = self._histories.get(cutoff)
        if held is None:
            held = self._histories[cutoff] = build_history(self.events, self.n_users, self.n_items, cutoff)
        return held

    @property
    def test_users(self) -> int:
        return int((np.diff(self.truth.indptr) > 0).sum())


def load_store(name: str, path: Path, catalogue_path: Path, split_date: str, end_date: str) -> StoreData:
    """A store's silo file as training data, ungated: benchmarks and tests on data they own.

    The federation client never calls this: it builds its data from the gate's output
    (:func:`siloguard.clients.app.store_for`).
    """
    frame, _report = load_clean(path)
    return build_store(name, frame, catalogue_path, split_date, end_date)


def build_store(name: str, frame: pd.DataFrame, catalogue_path: Path | Catalogue, split_date: str, end_date: str) -> StoreData:
    """Training events and test truth from cleaned transactions (``customer_id`` any id type).

    User rows are the distinct customer ids with a purchase before the split, sorted; in the
    federation client these are the gate's pseudonyms (:attr:`StoreData.subjects`).
    """
    catalogue = catalogue_path if isinstance(catalogue_path, Catalogue) else load_catalogue(catalogue_path)
    split = pd.Timestamp(split_date)
    end = pd.Timestamp(end_date)
    train = frame[frame["invoice_date"] < split]
    test = frame[(frame["invoice_date"] >= split) & (frame["invoice_date"] < end)]
    if train.empty:
        raise DataError(
            f"store {name!r} has no purchases before the split date {split.date()} that may be used: "
            "pick an earlier --split-date, or check that its customers' consent is recorded"
        )
    users = pd.Index(np.sort(train["customer_id"].unique()))
    events = to_events(train, catalogue, users)
    test_events = to_events(test, catalogue, users)
    split_day = day_number(split)
    horizon = max(1, day_number(end) - split_day)
    n_items = catalogue.size
    truth = sp.csr_matrix(
        (np.ones(len(test_events), np.float32), (test_events["user"], test_events["item"])),
        shape=(len(users), n_items),
    )
    truth.sum_duplicates()
    truth.data[:] = 1.0
    return StoreData(
        name=name,
        n_users=len(users),
        n_items=n_items,
        split_day=split_day,
        horizon=horizon,
        events=events,
        history=build_history(events, len(users), n_items, split_day),
        truth=truth,
        subjects=users,
    )


def evaluate_rows(store: StoreData, rows: np.ndarray, score_rows: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """Full-ranking metrics of the given user rows (and the new-items variant), any scorer."""
    if len(rows) == 0:
        return {"users": 0, "new.users": 0}

    def scores(chunk: np.ndarray) -> np.ndarray:
        return score_rows(rows[chunk])

    truth = store.truth[rows]
    history = store.history.counts[rows]
    overall = ranking_metrics(scores, truth)
    new = ranking_metrics(scores, truth, history=history, new_items_only=True)
    out = {k: float(v) for k, v in overall.items()}
    out.update({f"new.{k}": float(v) for k, v in new.items()})
    return out


def evaluate_store(
    model: SharedModel, users: PrivateUsers | None, store: StoreData, *, validation: bool = False
) -> dict[str, float]:
    """Full-ranking metrics of a store's test customers (and the new-items variant).

    ``validation``: also ``val.users`` and ``val.ndcg@10`` on the last window of the training
    period (:attr:`StoreData.validation`), which is how the coordinator picks a round without
    looking at the test window.
    """
    rows = np.flatnonzero(np.diff(store.truth.indptr) > 0)
    out = evaluate_rows(store, rows, lambda r: score_users(model, users, store.history, r))
    if validation:
        history, truth = store.validation
        val_rows = np.flatnonzero(np.diff(truth.indptr) > 0)
        val = ranking_metrics(lambda c: score_users(model, users, history, val_rows[c]), truth[val_rows])
        out["val.users"] = float(val["users"])
        out["val.ndcg@10"] = float(val["ndcg@10"])
    return out
