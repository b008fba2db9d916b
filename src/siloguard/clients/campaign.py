"""RFM segments and campaign target lists, inside a store, through its gate.

Both start from the store's silo passed through the gate as a store operator:

* :func:`store_segments` for ``analytics.reporting`` (legitimate interests): every customer,
  pseudonymised, with their RFM scores and segment;
* :func:`campaign_list` for ``marketing.advertising.first_party.targeted`` (consent): only
  customers with a live marketing consent ever reach the ranking. The list holds the top
  customers of a segment or for a product by one score, the estimated chance that they buy
  (anything, for a segment: BG/NBD; the product, for a product list: the federated model's
  scores calibrated on the store's history) in the next 28 days, with their past spend, the
  currency, the product's description and the day the list speaks for ("as of").
  With a control share, a seeded random part of the list, stratified by segment, is held out
  and recorded with the campaign (:mod:`siloguard.clients.marketing`).
  If the store keeps customer profiles, the contact columns the policy lets the operator
  export for marketing are joined through the gate again, with action ``export``.

Every step is a gate decision in the audit log; the lists carry pseudonyms, never raw ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import secrets

import numpy as np
import pandas as pd

from siloguard.clients.gating import bind, store_gate
from siloguard.config import Settings
from siloguard.errors import ConfigError
from siloguard.policies.gate import Principal
from siloguard.recommender.segments import SEGMENTS, rfm_table

__all__ = ["CampaignList", "MARKETING", "REPORTING", "campaign_list", "operator", "store_segments"]

MARKETING = "marketing.advertising.first_party.targeted"
REPORTING = "analytics.reporting"
_RFM_COLUMNS = ("customer_id", "invoice", "invoice_date", "quantity", "unit_price")
_RANK_COLUMNS = (*_RFM_COLUMNS, "stock_code")


def operator(store: str, name: str = "operator") -> Principal:
    """The store operator ``staff:<name>``, bound to its role in the store's gate."""
    principal = Principal(id=f"staff:{name}", role="store_operator")
    bind(store, principal)
    return principal


def store_segments(settings: Settings, store: str, *, as_of: pd.Timestamp | None = None, staff: str = "operator") -> pd.DataFrame:
    """Every customer's RFM scores and segment (pseudonymous ids), for store reporting."""
    from siloguard.clients.marketing import gated_frame

    gated = gated_frame(settings, store, operator(store, staff), REPORTING, columns=_RFM_COLUMNS)
    table = rfm_table(gated.frame, as_of=as_of)
    table.attrs["decision"] = gated.decision_id  # the gate decision an export of the table cites
    return table


@dataclass(frozen=True)
class CampaignList:
    """A target list (the customers to contact) and the gate decisions that made it."""

    frame: pd.DataFrame
    consented: int  # customers with a live marketing consent (the pool the list is cut from)
    decisions: list[str] = field(default_factory=list)
    members: pd.DataFrame | None = None  # the whole list with each customer's arm
    as_of: pd.Timestamp | None = None
    control: float | None = None
    seed: int | None = None
    target: str = ""
    model_version: str | None = None


def _by_item(
    settings: Settings, store: str, gated: pd.DataFrame, item: str, model_file: Path | None, as_of: pd.Timestamp
) -> tuple[pd.DataFrame, str]:
    """Each consenting customer's chance of buying ``item`` in the next 28 days (calibrated on the
    store's own history, :mod:`siloguard.clients.scoring`), and whether they bought it before."""
    from siloguard.clients.private import load_private_users
    from siloguard.clients.scoring import Calibration, load_model, probabilities
    from siloguard.clients.store import build_store

    loaded = load_model(settings, model_file)
    index = loaded.catalogue.index()
    if item not in index:
        raise ConfigError(f"product {item!r} is not in the model's catalogue ({loaded.catalogue.size} products); check the stock code")

    def users_for(subjects: pd.Index):  # noqa: ANN202
        return load_private_users(settings, store, subjects, loaded.dim, seed=settings.model.seed)

    calibration = Calibration.fit(loaded, gated, users_for, as_of=as_of, seed=settings.model.seed)
    # Score as of the list's day: every purchase before it is history.
    data = build_store(store, gated, loaded.catalogue, str(as_of.date()), str((as_of + pd.Timedelta(days=1)).date()))
    users = users_for(data.subjects)
    column = int(index[item])
    scores, past = [], []
    for start in range(0, data.n_users, 512):
        rows = np.arange(start, min(start + 512, data.n_users))
        p, was = probabilities(loaded, calibration, users, data.history, rows)
        scores.append(p[:, column])
        past.append(was[:, column])
    out = pd.DataFrame(
        {"score": np.concatenate(scores) if scores else [], "past": np.concatenate(past) if past else []},
        index=data.subjects,
    )
    return out, loaded.version


def _buy_again(frame: pd.DataFrame, as_of: pd.Timestamp) -> pd.Series | None:
    """Each customer's chance of buying anything in the next 28 days (BG/NBD), or None when the
    store has too few consenting customers to fit it."""
    from siloguard.clients.scoring import HORIZON_DAYS
    from siloguard.errors import DataError
    from siloguard.marketing.clv import fit_clv

    try:
        model, summary = fit_clv(frame, as_of)
    except DataError:
        return None
    return pd.Series(model.purchases.p_any(HORIZON_DAYS, summary), index=summary.index)


def campaign_list(
    settings: Settings,
    store: str,
    *,
    segment: str | None = None,
    item: str | None = None,
    top: int = 100,
    model_file: Path | None = None,
    profiles: Path | None = None,
    staff: str = "operator",
    as_of: pd.Timestamp | None = None,
    control: float | None = None,
    seed: int | None = None,
) -> CampaignList:
    """The top ``top`` consenting customers of a segment or for a product, ready to export.

    ``score`` is one scale for every row: the estimated chance that the customer buys (the
    product, for a product list; anything, for a segment list) in the 28 days after ``as_of``
    (default: the day after the store's last purchase). A segment list is ranked by it (spend
    breaks ties; if the store has too few consenting customers to estimate it, by spend alone
    and the score is left empty). With ``control`` a seeded, segment-stratified share of the
    list is held out (:func:`siloguard.marketing.experiment.assign_control`): ``frame`` then
    holds the customers to contact, ``members`` everyone with their arm.
    """
    from siloguard.clients.marketing import gated_frame, shelf_descriptions, store_currency
    from siloguard.marketing.experiment import TREATMENT, assign_control

    if (segment is None) == (item is None):
        raise ConfigError(
            "name exactly one target: a segment (--segment, e.g. champions) or a product (--item, a stock code)"
            if segment is None else
            "name either a segment (--segment) or a product (--item), not both"
        )
    if segment is not None and segment not in SEGMENTS:
        raise ConfigError(f"unknown segment {segment!r}: use one of {', '.join(SEGMENTS)}")
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    who = operator(store, staff)
    gated = gated_frame(settings, store, who, MARKETING, before=as_of, columns=_RANK_COLUMNS)
    decisions = [gated.decision_id]
    frame = gated.frame
    if frame.empty:
        raise ConfigError(f"store {store!r}: no customer with a live marketing consent has a purchase before the list's day")
    day = as_of if as_of is not None else (frame["invoice_date"].max() + pd.Timedelta(days=1)).normalize()
    rfm = rfm_table(frame, as_of=day).set_index("customer_id")
    model_version = None
    if segment is not None:
        pool = rfm[rfm["segment"] == segment]
        chance = _buy_again(frame, day)
        if chance is None:
            ranked = pool.assign(score=np.nan, basis="spend").sort_values(["monetary", "frequency"], ascending=False)
        else:
            ranked = pool.assign(score=chance.reindex(pool.index), basis="buy_again")
            ranked = ranked.sort_values(["score", "monetary"], ascending=False)
    else:
        scores, model_version = _by_item(settings, store, frame, str(item), model_file, day)
        ranked = rfm.join(scores, how="inner")
        ranked["basis"] = np.where(ranked["past"].astype(bool), "past_buyer", "model")
        ranked = ranked.sort_values(["score", "monetary"], ascending=False)
    chosen = ranked.head(top)
    out = pd.DataFrame(
        {
            "customer_id": chosen.index.astype(str),
            "rank": np.arange(1, len(chosen) + 1),
            "segment": chosen["segment"].to_numpy(),
            "basis": chosen["basis"].to_numpy(),
            "score": np.round(chosen["score"].astype(float).to_numpy(), 4),
            "spend": chosen["monetary"].astype(float).round(2).to_numpy(),
            "currency": store_currency(settings),
            "as_of": str(day.date()),
        }
    )
    if item is not None:
        out.insert(5, "product", str(item))
        out.insert(6, "description", shelf_descriptions(settings, store).get(str(item), ""))
    members = out.assign(arm=TREATMENT)
    used_seed = None
    if control is not None:
        used_seed = int(seed) if seed is not None else secrets.randbits(31)
        members["arm"] = assign_control(members.set_index("customer_id")["segment"], control, used_seed).to_numpy()
    targets = out[members["arm"].to_numpy() == TREATMENT]
    if profiles is not None:
        targets, decision = _with_contacts(settings, store, who, targets, profiles)
        decisions.append(decision)
    return CampaignList(
        frame=targets.reset_index(drop=True), consented=len(rfm), decisions=decisions, members=members,
        as_of=day, control=control, seed=used_seed, target=f"segment:{segment}" if segment else f"item:{item}",
        model_version=model_version,
    )


def _with_contacts(
    settings: Settings, store: str, who: Principal, targets: pd.DataFrame, profiles: Path
) -> tuple[pd.DataFrame, str]:
    """Join the contact columns the gate lets the operator export for marketing."""
    try:
        frame = pd.read_csv(profiles, dtype={"customer_id": "Int64"})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--profiles {profiles}: unreadable as CSV ({type(exc).__name__})") from None
    gate = store_gate(settings, store)
    # No columns named: the gate keeps exactly what this role may export for marketing.
    gated = gate.admit(who, MARKETING, "customer_profiles", frame, action="export")
    contacts = gated.frame.drop_duplicates("customer_id").set_index("customer_id")
    joined = targets.join(contacts, on="customer_id", how="inner")
    return joined, gated.decision_id
