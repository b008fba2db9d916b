"""A store's training data: each round's examples from histories built once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from siloguard.clients.store import StoreData
from siloguard.config import ModelSettings
from siloguard.recommender.features import build_history


def _store() -> StoreData:
    rng = np.random.default_rng(3)
    n_users, n_items = 30, 12
    rows = [(int(rng.integers(n_users)), int(rng.integers(n_items)), int(day), f"i{k}")
            for k, day in enumerate(rng.integers(0, 120, 400))]
    events = pd.DataFrame(rows, columns=["user", "item", "day", "invoice"])
    return StoreData(name="s", n_users=n_users, n_items=n_items, split_day=120, horizon=14, events=events,
                     history=build_history(events, n_users, n_items, 120), truth=sp.csr_matrix((n_users, n_items)),
                     subjects=pd.Index(range(n_users)))


def test_every_round_gets_the_same_examples_from_histories_built_once() -> None:
    settings = ModelSettings()
    store = _store()
    first = store.examples(settings, np.random.default_rng(7))
    cutoffs = sorted(store._histories)
    assert len(cutoffs) == settings.cutoffs  # one history per cutoff, kept
    held = {c: store._histories[c] for c in cutoffs}
    again = store.examples(settings, np.random.default_rng(7))
    assert all(store._histories[c] is held[c] for c in cutoffs)  # not rebuilt in the next round
    fresh = _store().examples(settings, np.random.default_rng(7))
    for a, b, c in ((first, again, fresh),):
        for name in ("items", "weights", "features", "mask", "user"):
            assert np.array_equal(getattr(a.bags, name), getattr(b.bags, name))
            assert np.array_equal(getattr(a.bags, name), getattr(c.bags, name))
        assert np.array_equal(a.targets, b.targets) and np.array_equal(a.targets, c.targets)
    history, _ = store.validation  # the latest cutoff is the validation's: the same object
    assert history is store._histories[store.split_day - store.horizon]
    kept = store.history_at(60)
    rebuilt = build_history(store.events, store.n_users, store.n_items, 60)
    assert (kept.counts != rebuilt.counts).nnz == 0 and np.array_equal(kept.features, rebuilt.features)
