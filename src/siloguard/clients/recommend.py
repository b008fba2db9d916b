"""Recommendations for one customer, for the store's own staff, through the store's gate.

:class:`Recommender` is built once per process (``siloguard store recommend`` builds it for
one answer, the store's staff API for many): the model the coordinator sent, its catalogue
and descriptions, the store's consenting customers' private embeddings, the item counts its
repeat features need, and the score calibration (:mod:`siloguard.clients.scoring`).

Every answer passes the gate again (:meth:`Recommender.recommend`): the customer's rows go
through it as the staff member, for ``personalize.profiling`` (the purpose the customers
consented to the recommender for), so a customer who withdrew, objected or was erased is
refused at the next call, and each answer is a decision in the store's audit log. The ranking
covers the whole catalogue; each product comes with its description, one comparable score
(the chance of buying it in the next 28 days) and why it is there:

* a past purchase: "bought 5 times, last 12 days ago";
* a new product: "bought together with <product> by customers across stores" (the past
  purchase whose shared item vector pulls the product up most; the vectors are learnt from
  every store's baskets), or "popular with customers across stores" when no past purchase
  helps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from siloguard.clients.gating import bind, silo_path, store_gate, store_keys
from siloguard.clients.scoring import HORIZON_DAYS, Calibration, LoadedModel, load_model, probabilities
from siloguard.config import Settings
from siloguard.data.loader import load_clean
from siloguard.errors import AccessDenied, ConfigError, DataError
from siloguard.policies.gate import Principal
from siloguard.privacy.pseudonyms import normalise_ids
from siloguard.recommender.features import customer_history, history_bags
from siloguard.recommender.model import PrivateUsers

__all__ = ["PERSONALISE", "Recommendation", "Recommender", "serving_threads", "staff"]

PERSONALISE = "personalize.profiling"
_COLUMNS = ("customer_id", "invoice", "invoice_date", "stock_code", "quantity", "unit_price")
_EPOCH = pd.Timestamp("1970-01-01")


def staff(store: str, name: str = "operator") -> Principal:
    """The store's staff member ``staff:<name>`` as a store operator in its gate."""
    principal = Principal(id=f"staff:{name}", role="store_operator")
    bind(store, principal)
    return principal


def _customer_key(value: object) -> str:
    """A customer id as the store's ids are keyed: "17850", "17850.0" and 17850 alike."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _day(ts: pd.Timestamp) -> int:
    return int((pd.Timestamp(ts).normalize() - _EPOCH).days)


@dataclass(frozen=True)
class Recommendation:
    """One customer's top products, as of a day, with the decision that allowed it."""

    items: pd.DataFrame  # rank, stock_code, description, score, basis, reason
    as_of: str
    model_version: str
    decision: str
    horizon_days: int = HORIZON_DAYS
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "as_of": self.as_of,
            "model_version": self.model_version,
            "score": f"estimated chance of buying the product in the next {self.horizon_days} days",
            "items": [
                {k: (round(float(v), 4) if k == "score" else (int(v) if k == "rank" else v)) for k, v in row.items()}
                for row in self.items.to_dict(orient="records")
            ],
        }


def serving_threads() -> None:
    """One torch thread: scoring one customer is a handful of small matrix products, for which
    a second thread costs more than it saves (p99 of the scoring halved on 2 busy cores)."""
    torch.set_num_threads(1)


class Recommender:
    """A store's recommender for its staff; see the module's docstring."""

    def __init__(self, settings: Settings, store: str, *, model_file: Path | None = None, staff_name: str = "operator") -> None:
        self.settings = settings
        self.store = store
        self.loaded: LoadedModel = load_model(settings, model_file)
        self._index = self.loaded.catalogue.index()
        self._keys = store_keys(settings, store)
        raw, _ = load_clean(silo_path(settings, store))
        self._raw = raw
        self._rows_of = raw.groupby(normalise_ids(raw["customer_id"]).to_numpy()).indices
        self.as_of = (raw["invoice_date"].max() + pd.Timedelta(days=1)).normalize()
        self._today = _day(self.as_of)
        # The store-level counts and the calibration come from the customers who consent now.
        gated = self._admit(staff(store, staff_name), raw)
        frame = gated.frame
        if frame.empty:
            raise DataError(f"store {store!r}: no customer consents to personalised recommendations ({PERSONALISE})")
        codes = frame["stock_code"].astype(str).map(self._index)
        buyers = frame.assign(item=codes).dropna(subset=["item"]).groupby("item")["customer_id"].nunique()
        self._item_customers = np.zeros(self.loaded.catalogue.size, np.float64)
        self._item_customers[buyers.index.astype(int)] = buyers.to_numpy()
        self._n_users = int(frame["customer_id"].nunique())
        self._popularity = (np.log1p(self._item_customers) / np.log1p(max(self._n_users, 1))).astype(np.float32)
        if not settings.privacy.enabled:  # as the store trained it: its raw counts without DP (clients/app.py)
            self.loaded.model.set_store_popularity(self._item_customers)
        elif settings.privacy.popularity_share:  # under DP only a DP release: never the counts above
            from siloguard.clients.private import served_popularity
            from siloguard.privacy.popularity import popularity_prior

            released = served_popularity(settings, store, self.loaded.catalogue.size)
            if released is not None:
                self.loaded.model.set_store_popularity(
                    popularity_prior(*released), released=settings.privacy.own_repeat != "all"
                )
        if settings.privacy.enabled and settings.privacy.own_repeat:
            from siloguard.clients.private import load_private_repeat

            if settings.privacy.own_repeat != "all" and torch.isnan(self.loaded.model.repeat_popularity).any():
                self.loaded.model.repeat_popularity.zero_()  # a shared head as it was trained without a release
            # the store's own repeat ranker, or its own item biases (DP runs); never into a model trained without DP
            load_private_repeat(settings, store, self.loaded.model, settings.privacy.own_repeat)
        self._vectors = self._private_vectors()
        self.calibration = Calibration.fit(self.loaded, frame, self._users_for, as_of=self.as_of, seed=settings.model.seed)
        self._descriptions = {**self.loaded.descriptions, **self._store_descriptions()}

    # ---- state built once --------------------------------------------------------------
    def _admit(self, who: Principal, frame: pd.DataFrame):  # noqa: ANN202 - GatedData
        return store_gate(self.settings, self.store).admit(
            who, PERSONALISE, "transactions", frame, action="read", columns=_COLUMNS
        )

    def _private_vectors(self) -> dict[str, np.ndarray]:
        from siloguard.clients.private import _read, private_path

        stored = _read(private_path(self.settings, self.store))
        if stored is None or stored[1].shape[1] != self.loaded.dim:
            return {}
        names, weight = stored
        array = weight.detach().numpy()
        return {name: array[i] for i, name in enumerate(names)}

    def _users_for(self, subjects: pd.Index) -> PrivateUsers:
        users = PrivateUsers(len(subjects), self.loaded.dim)
        with torch.no_grad():
            users.weight.zero_()
            for i, name in enumerate(subjects):
                vector = self._vectors.get(str(name))
                if vector is not None:
                    users.weight[i] = torch.from_numpy(vector)
        return users

    def _store_descriptions(self) -> dict[str, str]:
        """The store's own shelf descriptions (its publication: products 3+ customers bought)."""
        import json

        path = Path(self.settings.work_dir) / "publication.json"
        try:
            return {str(k): str(v) for k, v in (json.loads(path.read_text()).get("descriptions") or {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    # ---- one answer --------------------------------------------------------------------
    def recommend(self, customer_id: str, *, k: int = 10, staff_name: str = "operator") -> Recommendation:
        """The customer's top ``k`` products; AccessDenied if the gate lets none of their rows through."""
        if not 1 <= k <= 100:
            raise ConfigError(f"--k {k}: ask for 1 to 100 products")
        who = staff(self.store, staff_name)
        rows = self._rows_of.get(_customer_key(customer_id))
        part = (self._raw.iloc[rows] if rows is not None else self._raw.iloc[0:0])[list(_COLUMNS)]
        gated = self._admit(who, part)
        if gated.frame.empty:
            # Same answer for unknown, not consenting, withdrawn or erased: nothing about the person leaks.
            raise AccessDenied(
                "no recommendation: this customer is not known to the store or does not consent to "
                f"personalised recommendations ({PERSONALISE}) now"
            )
        items = self._rank(gated.frame, k)
        return Recommendation(items=items, as_of=str(self.as_of.date()), model_version=self.loaded.version, decision=gated.decision_id)

    def _history(self, frame: pd.DataFrame):  # noqa: ANN202 - (items, days, History)
        codes = frame["stock_code"].astype(str).to_numpy()
        items = np.fromiter((self._index.get(c, -1) for c in codes), np.int64, len(codes))
        days = ((frame["invoice_date"].to_numpy() - np.datetime64("1970-01-01")) // np.timedelta64(1, "D")).astype(np.int64)
        history = customer_history(items, days, frame["invoice"].astype(str).to_numpy(), self.loaded.catalogue.size,
                                   self._today, self._popularity)
        return items, days, history

    def _rank(self, frame: pd.DataFrame, k: int) -> pd.DataFrame:
        items, days, history = self._history(frame)
        users = self._users_for(pd.Index([frame["customer_id"].iloc[0]]))
        probs, past = probabilities(self.loaded, self.calibration, users, history, np.array([0]))
        score, past = probs[0], past[0]
        # highest probability first; ties in the model's own order (past purchases first)
        order = np.lexsort((-past.astype(int), -score))[:k]
        codes = self.loaded.catalogue.codes
        today = self._today
        baskets = dict(zip(history.counts.indices.tolist(), history.counts.data.tolist()))
        bag = history_bags(history, np.array([0]), 256)
        pull_of = self._pulls(bag)
        reasons = []
        for item in order:
            if past[item]:
                ago = today - int(days[items == item].max())
                n = int(baskets[int(item)])
                reasons.append(f"bought {n} time{'s' if n != 1 else ''}, last {ago} day{'s' if ago != 1 else ''} ago")
            else:
                reasons.append(self._why_new(bag, pull_of, int(item)))
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(order) + 1),
                "stock_code": [codes[i] for i in order],
                "description": [self._descriptions.get(codes[i], "") for i in order],
                "score": np.round(score[order], 4),
                "basis": np.where(past[order], "past_purchase", "new_product"),
                "reason": reasons,
            }
        )

    def _pulls(self, bag):  # noqa: ANN001, ANN202
        """Weighted shared item vectors of the customer's past purchases (the collaborative part's inputs)."""
        real = bag.mask[0] > 0
        if not real.any():
            return None
        with torch.no_grad():
            model = self.loaded.model
            held = torch.from_numpy(bag.items[0][real])
            context = model.items.weight[held] + model.text_in(model.item_text[held])
            return (torch.from_numpy(bag.weights[0][real]).unsqueeze(1) * context), bag.items[0][real]

    def _why_new(self, bag, pulls, item: int) -> str:  # noqa: ANN001
        if pulls is not None:
            weighted, held = pulls
            with torch.no_grad():
                model = self.loaded.model
                target = model.decoder.weight[item] + model.text_out.weight.T @ model.item_text[item]
                pull = (weighted @ target).numpy()
            best = int(np.argmax(pull))
            if pull[best] > 0:
                code = self.loaded.catalogue.codes[int(held[best])]
                name = self._descriptions.get(code) or code
                return f"bought together with {name} by customers across stores"
        return "popular with customers across stores"
