"""One customer's history without pandas equals their row of the store's history."""

from __future__ import annotations

import numpy as np
import pandas as pd

from siloguard.data.loader import load_clean, sample_path
from siloguard.recommender.features import Catalogue, build_history, customer_history, to_events


def test_when_one_customer_is_summarised_then_counts_and_features_equal_build_history() -> None:
    frame, _ = load_clean(sample_path())
    catalogue = Catalogue.from_frame(frame)
    users = pd.Index(np.sort(frame["customer_id"].unique()))
    events = to_events(frame, catalogue, users)
    cutoff = int((pd.Timestamp("2011-10-01") - pd.Timestamp("1970-01-01")).days)
    store = build_history(events, len(users), catalogue.size, cutoff)
    past = events[events["day"] < cutoff].drop_duplicates(["user", "item"])
    popularity = np.log1p(np.bincount(past["item"], minlength=catalogue.size)) / np.log1p(len(users))
    index = catalogue.index()
    checked = 0
    for row in range(0, len(users), 25):
        lines = frame[frame["customer_id"] == users[row]]
        items = np.array([index.get(c, -1) for c in lines["stock_code"].astype(str)])
        days = ((lines["invoice_date"].to_numpy() - np.datetime64("1970-01-01")) // np.timedelta64(1, "D")).astype(np.int64)
        one = customer_history(items, days, lines["invoice"].astype(str).to_numpy(), catalogue.size, cutoff, popularity)
        start, end = store.counts.indptr[row], store.counts.indptr[row + 1]
        assert np.array_equal(one.counts.indices, store.counts.indices[start:end])
        assert np.allclose(one.counts.data, store.counts.data[start:end])
        assert np.allclose(one.features, store.features[start:end], atol=1e-6)
        checked += end > start
    assert checked > 30  # customers with a history before the cutoff were compared, not only empty ones
