"""RFM segments and campaign target lists, inside a store, through its gate.

Both start from the store's silo passed through the gate as a store operator:

* :func:`store_segments` for ``analytics.reporting`` (legitimate interests): every customer,
  pseudonymised, with their RFM scores and segment;
* :func:`campaign_list` for ``marketing.advertising.first_party.targeted`` (consent): only
  customers with a live marketing consent ever reach the ranking. The list holds the top
  customers of a segment (by spend) or for a product (by the federated model: past buyers of
  it first, then the others by the shared collaborative part and their private embedding).
  If the store keeps customer profiles, the contact columns the policy lets the operator
  export for marketing are joined through the gate again, with action ``export``.

Every step is a gate decision in the audit log; the lists carry pseudonyms, never raw ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from siloguard.clients.gating import bind, silo_path, store_gate
from siloguard.config import Settings
from siloguard.data.loader import load_clean
from siloguard.errors import ConfigError
from siloguard.policies.gate import GatedData, Principal
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


def _gated(settings: Settings, store: str, who: Principal, purpose: str, columns: tuple[str, ...]) -> GatedData:
    frame, _ = load_clean(silo_path(settings, store))
    return store_gate(settings, store).admit(who, purpose, "transactions", frame, action="read", columns=columns)


def store_segments(settings: Settings, store: str, *, as_of: pd.Timestamp | None = None, staff: str = "operator") -> pd.DataFrame:
    """Every customer's RFM scores and segment (pseudonymous ids), for store reporting."""
    gated = _gated(settings, store, operator(store, staff), REPORTING, _RFM_COLUMNS)
    return rfm_table(gated.frame, as_of=as_of)


@dataclass(frozen=True)
class CampaignList:
    """A target list and the gate decisions that made it."""

    frame: pd.DataFrame
    consented: int  # customers with a live marketing consent (the pool the list is cut from)
    decisions: list[str] = field(default_factory=list)


def _by_item(settings: Settings, store: str, gated: pd.DataFrame, item: str, model_file: Path) -> pd.Series:
    """Each consenting customer's score for ``item`` from the federated model (higher first)."""
    from siloguard.clients.private import load_private_users
    from siloguard.clients.store import build_store
    from siloguard.recommender.model import SharedModel, score_users
    from siloguard.runs import load_catalogue, run_manifest

    if not model_file.is_file():
        raise ConfigError(f"no model at {model_file}: pass --model (a model.pt the coordinator gave you, with its catalogue.json)")
    # The catalogue that came with the model (a store's site has no run of the coordinator's);
    # a run prepared in one directory also has it in its run.json.
    catalogue_path = model_file.parent / "catalogue.json"
    if not catalogue_path.is_file():
        catalogue_path = run_manifest(settings.work_dir).require_catalogue()
    catalogue = load_catalogue(catalogue_path)
    index = catalogue.index()
    if item not in index:
        raise ConfigError(f"product {item!r} is not in the model's catalogue ({catalogue.size} products); check the stock code")
    # Score as of now: every purchase so far is history (no test period).
    end = (gated["invoice_date"].max() + pd.Timedelta(days=1)).normalize()
    data = build_store(store, gated, catalogue, str(end.date()), str((end + pd.Timedelta(days=1)).date()))
    state = torch.load(model_file, weights_only=True)
    dim = state["items.weight"].shape[1]
    hidden = state["repeat.0.weight"].shape[0] if "repeat.0.weight" in state else settings.model.hidden
    model = SharedModel(catalogue.size, dim, hidden)
    model.load_state_dict(state)
    users = load_private_users(settings, store, data.subjects, dim, seed=settings.model.seed)
    rows = np.arange(data.n_users)
    column = int(index[item])
    scores = np.concatenate(
        [score_users(model, users, data.history, rows[i : i + 512])[:, column] for i in range(0, len(rows), 512)]
    ) if len(rows) else np.array([])
    return pd.Series(scores, index=data.subjects, name="score")


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
) -> CampaignList:
    """The top ``top`` consenting customers of a segment or for a product, ready to export."""
    if (segment is None) == (item is None):
        raise ConfigError(
            "name exactly one target: a segment (--segment, e.g. champions) or a product (--item, a stock code)"
            if (segment is None) == (item is None) and segment is None else
            "name either a segment (--segment) or a product (--item), not both"
        )
    if segment is not None and segment not in SEGMENTS:
        raise ConfigError(f"unknown segment {segment!r}: use one of {', '.join(SEGMENTS)}")
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    who = operator(store, staff)
    gated = _gated(settings, store, who, MARKETING, _RANK_COLUMNS)
    decisions = [gated.decision_id]
    rfm = rfm_table(gated.frame).set_index("customer_id")
    if segment is not None:
        pool = rfm[rfm["segment"] == segment].sort_values(["monetary", "frequency"], ascending=False)
        ranked = pool.assign(score=pool["monetary"])
    else:
        scores = _by_item(settings, store, gated.frame, str(item), model_file or settings.work_dir / "model" / "model.pt")
        ranked = rfm.join(scores, how="inner").sort_values("score", ascending=False)
    chosen = ranked.head(top)
    score = chosen["score"].astype(float).to_numpy()
    if segment is not None:
        basis = np.full(len(chosen), "spend", dtype=object)
    else:  # score_users ranks past buyers of the item above everyone else by a fixed offset
        from siloguard.recommender.model import PAST_PURCHASE_OFFSET

        past = score >= PAST_PURCHASE_OFFSET / 2
        basis = np.where(past, "past_buyer", "model")
        score = np.where(past, score - PAST_PURCHASE_OFFSET, score)
    out = pd.DataFrame(
        {
            "customer_id": chosen.index.astype(str),
            "rank": np.arange(1, len(chosen) + 1),
            "segment": chosen["segment"].to_numpy(),
            "basis": basis,
            "score": np.round(score, 4),
        }
    )
    if profiles is not None:
        out, decision = _with_contacts(settings, store, who, out, profiles)
        decisions.append(decision)
    return CampaignList(frame=out.reset_index(drop=True), consented=len(rfm), decisions=decisions)


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
