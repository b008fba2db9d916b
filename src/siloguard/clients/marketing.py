"""A store's marketing on its own site: profiles, lifetime value, campaign experiments, exports.

Every read is a pass of the store's silo through its gate as a staff member (``staff:<name>``,
role ``store_operator``), for the purpose the use rests on:

============================  ================================================  ===========
what                          purpose                                           basis
============================  ================================================  ===========
profiles, lifetime value      ``personalize.profiling``                         consent
campaign lists and reports    ``marketing.advertising.first_party.targeted``    consent
============================  ================================================  ===========

so only customers with a live consent at that moment are in them, and one who withdrew (or
was erased) is gone at the next call. Every file that leaves the store's tools is exported
with :func:`export_file`: a ``marketing.export`` event in the store's own audit log first (no
event, no file), then the file, written atomically with mode 0600.

Campaigns are recorded in the store's database (``campaigns``, ``campaign_members``: the
store's pseudonyms, arms and strata, never a raw id) when their list is exported, with the
seed and share of their held-out control group, so :func:`campaign_report` can later
measure what the campaign changed (:mod:`siloguard.marketing.experiment`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from siloguard.clients.gating import bind, silo_path, store_audit, store_gate
from siloguard.config import Settings
from siloguard.data.loader import load_clean
from siloguard.errors import ConfigError, DataError
from siloguard.policies.gate import GatedData, Principal

__all__ = [
    "MARKETING",
    "PROFILING",
    "CampaignRecord",
    "Profiles",
    "campaign_report",
    "customer_profiles",
    "customer_values",
    "export_file",
    "forget_campaign_members",
    "gated_frame",
    "load_campaign",
    "parse_day",
    "record_campaign",
    "shelf_descriptions",
    "staff_principal",
    "store_currency",
]

MARKETING = "marketing.advertising.first_party.targeted"
PROFILING = "personalize.profiling"
#: What the marketing tools read of the silo (never the description: products are described
#: from the store's shelf, see :func:`shelf_descriptions`).
COLUMNS = ("customer_id", "invoice", "invoice_date", "stock_code", "quantity", "unit_price")
_DEFAULT_CURRENCY = "GBP"  # the UCI Online Retail data (a UK retailer) is in pounds sterling


def staff_principal(store: str, name: str = "operator") -> Principal:
    """The store operator ``staff:<name>``, bound to its role in the store's gate."""
    principal = Principal(id=f"staff:{name}", role="store_operator")
    bind(store, principal)
    return principal


def parse_day(text: str | None, option: str) -> pd.Timestamp | None:
    """A ``YYYY-MM-DD`` option as a day; ConfigError naming the option otherwise."""
    if text is None:
        return None
    try:
        return pd.Timestamp(datetime.strptime(str(text), "%Y-%m-%d"))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give a day as YYYY-MM-DD") from None


def gated_frame(
    settings: Settings, store: str, who: Principal, purpose: str, *, before: pd.Timestamp | None = None,
    columns: tuple[str, ...] = COLUMNS, frame: pd.DataFrame | None = None,
) -> GatedData:
    """The store's transactions (before ``before``) that ``who`` may use for ``purpose`` now."""
    if frame is None:
        frame, _ = load_clean(silo_path(settings, store))
    if before is not None:
        frame = frame[frame["invoice_date"] < before]
    return store_gate(settings, store).admit(who, purpose, "transactions", frame, action="read", columns=columns)


def store_currency(settings: Settings) -> str:
    """The currency of the store's prices: its site's ``currency`` (``store init --currency``)."""
    from siloguard.clients.site import StoreSite

    if StoreSite.is_site(settings.work_dir):
        return str(StoreSite.open(settings.work_dir, settings).manifest.get("currency") or _DEFAULT_CURRENCY)
    return _DEFAULT_CURRENCY


def shelf_descriptions(settings: Settings, store: str) -> dict[str, str]:
    """Product descriptions as on the store's shelf: what it publishes (products 3+ customers
    bought, so no note about one customer), plus those that came with the model's catalogue."""
    out: dict[str, str] = {}
    for path in (settings.work_dir / "model" / "catalogue.json", settings.work_dir / "publication.json"):
        try:
            out.update({str(k): str(v) for k, v in (json.loads(path.read_text()).get("descriptions") or {}).items()})
        except (OSError, ValueError, AttributeError):
            continue
    if not out:  # a run prepared in one directory: the same rule, applied to the store's own file
        from siloguard.runs import shelf_descriptions as published

        out = published(load_clean(silo_path(settings, store))[0])
    return out


def export_file(
    settings: Settings, store: str, who: Principal, path: Path, data: bytes, *, kind: str, purpose: str,
    decision: str, rows: int, customers: int, extra: dict[str, int] | None = None,
) -> Path:
    """Record a ``marketing.export`` event in the store's log, then write ``path`` (mode 0600)."""
    from siloguard._files import write_atomic
    from siloguard.audit.events import AuditEvent
    from siloguard.audit.vocabulary import MARKETING_EXPORT

    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: its directory {path.parent} does not exist; create it or choose another file")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: give a file name")
    store_audit(settings).record(
        AuditEvent(
            actor=who.id, action=MARKETING_EXPORT, resource=f"export:{kind}", purpose=purpose, decision="allow",
            reason=f"decision:{decision}", counts={"rows": rows, "customers": customers, **(extra or {})}, store=store,
        )
    )
    write_atomic(path, data, mode=0o600)
    return path


# ---- profiles and lifetime value --------------------------------------------------------


@dataclass(frozen=True)
class Profiles:
    frame: pd.DataFrame
    summary: dict[str, Any]
    decision: str
    as_of: str


def customer_profiles(
    settings: Settings, store: str, *, staff: str = "operator", as_of: pd.Timestamp | None = None, groups: int = 12,
) -> Profiles:
    """Every consenting customer's tier, lifecycle stage, interests and habits (pseudonymous ids)."""
    from siloguard.marketing.profiles import build_profiles, learn_interests, profile_summary

    who = staff_principal(store, staff)
    gated = gated_frame(settings, store, who, PROFILING, before=as_of)
    frame = gated.frame
    end = as_of if as_of is not None else (frame["invoice_date"].max() + pd.Timedelta(days=1)).normalize() if len(frame) else pd.Timestamp.now().normalize()
    shelf = shelf_descriptions(settings, store)
    interests = None
    if len(shelf) >= 6:
        products = pd.DataFrame({"stock_code": list(shelf), "description": list(shelf.values())})
        interests = learn_interests(products, groups=groups, seed=settings.model.seed)
    profiles = build_profiles(frame, as_of=end, interests=interests)
    summary = profile_summary(profiles)
    return Profiles(profiles, summary, gated.decision_id, str(end.date()))


def customer_values(
    settings: Settings, store: str, *, staff: str = "operator", as_of: pd.Timestamp | None = None, days: int = 90,
) -> tuple[pd.DataFrame, str, str]:
    """Each consenting customer's expected purchases and spend in the next ``days`` (BG/NBD +
    Gamma-Gamma fitted on the store's consenting customers); returns (frame, decision, as of)."""
    from siloguard.marketing.clv import fit_clv

    if days < 1:
        raise ConfigError(f"--days {days}: give a horizon of at least one day")
    who = staff_principal(store, staff)
    gated = gated_frame(settings, store, who, PROFILING, before=as_of)
    if gated.frame.empty:
        raise DataError(f"store {store!r}: no customer consents to profiling ({PROFILING}) now")
    end = as_of if as_of is not None else (gated.frame["invoice_date"].max() + pd.Timedelta(days=1)).normalize()
    model, summary = fit_clv(gated.frame, end)
    predicted = model.predict(summary, days)
    out = summary.join(predicted).reset_index()
    out = out.rename(columns={"purchases": f"purchases_{days}d", "spend": f"spend_{days}d"})
    return out.round(4), gated.decision_id, str(end.date())


# ---- campaigns ------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _engine(url: str):  # noqa: ANN202 - one engine per database and process
    from siloguard.storage.db import create_engine

    return create_engine(url)


@dataclass(frozen=True)
class CampaignRecord:
    id: str
    store: str
    target: str
    purpose: str
    as_of: str
    send_date: str
    control_share: float
    seed: int
    currency: str
    created_by: str
    created_at: str
    model_version: str | None


def record_campaign(
    settings: Settings, store: str, who: Principal, members: pd.DataFrame, *, target: str, purpose: str,
    as_of: pd.Timestamp, send_date: pd.Timestamp, control_share: float, seed: int, decision: str,
    model_version: str | None = None,
) -> CampaignRecord:
    """Keep the campaign and its members (pseudonym, arm, stratum, rank) in the store's database."""
    from siloguard.storage.orm import campaign_members, campaigns

    record = CampaignRecord(
        id=f"c{secrets.token_hex(4)}", store=store, target=target, purpose=purpose, as_of=str(as_of.date()),
        send_date=str(send_date.date()), control_share=float(control_share), seed=int(seed),
        currency=store_currency(settings), created_by=who.id, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_version=model_version,
    )
    rows = [
        {"campaign_id": record.id, "subject": str(r.customer_id), "arm": str(r.arm), "stratum": str(r.stratum), "rank": int(r.rank)}
        for r in members.itertuples(index=False)
    ]
    with _engine(settings.database.url).begin() as conn:
        conn.execute(
            campaigns.insert().values(
                id=record.id, store=store, created_at=datetime.now(UTC), created_by=who.id, target=target,
                purpose=purpose, as_of=record.as_of, send_date=record.send_date, control_share=record.control_share,
                seed=record.seed, currency=record.currency, decision=decision, model_version=model_version,
            )
        )
        if rows:
            conn.execute(campaign_members.insert(), rows)
    return record


def load_campaign(settings: Settings, store: str, campaign_id: str) -> tuple[CampaignRecord, pd.DataFrame]:
    """The campaign and its members; ConfigError if the store has no such campaign."""
    import sqlalchemy as sa

    from siloguard.storage.orm import campaign_members, campaigns

    with _engine(settings.database.url).connect() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == str(campaign_id), campaigns.c.store == store)
        ).mappings().first()
        if row is None:
            raise ConfigError(
                f"store {store!r} has no campaign {campaign_id!r}: the id is printed when the list is exported "
                "(siloguard store campaign create ... --control 10%)"
            )
        members = pd.DataFrame(
            conn.execute(
                sa.select(campaign_members.c.subject, campaign_members.c.arm, campaign_members.c.stratum, campaign_members.c.rank)
                .where(campaign_members.c.campaign_id == row["id"])
            ).mappings().all(),
            columns=["subject", "arm", "stratum", "rank"],
        )
    record = CampaignRecord(
        id=row["id"], store=row["store"], target=row["target"], purpose=row["purpose"], as_of=row["as_of"],
        send_date=row["send_date"], control_share=float(row["control_share"]), seed=int(row["seed"]),
        currency=row["currency"], created_by=row["created_by"], created_at=str(row["created_at"]),
        model_version=row["model_version"],
    )
    return record, members


def forget_campaign_members(settings: Settings, store: str, customer_ids: list[object]) -> int:
    """Delete these customers from every recorded campaign of the store (erasure); returns how
    many member rows went. Their pseudonyms under every live key version are matched."""
    import sqlalchemy as sa

    from siloguard.clients.gating import store_keys
    from siloguard.privacy.pseudonyms import Pseudonymiser
    from siloguard.storage.orm import campaign_members, campaigns

    keys = store_keys(settings, store)
    pseudonymiser = Pseudonymiser(keys)
    ids = pd.Series([str(c) for c in customer_ids], dtype=object)
    names: set[str] = set()
    for version in keys.pseudonym_versions():
        names.update(pseudonymiser.pseudonymise(ids, version=version).dropna())
    if not names:
        return 0
    mine = sa.select(campaigns.c.id).where(campaigns.c.store == store)
    with _engine(settings.database.url).begin() as conn:
        result = conn.execute(
            campaign_members.delete().where(campaign_members.c.campaign_id.in_(mine), campaign_members.c.subject.in_(names))
        )
    return int(result.rowcount or 0)


def campaign_report(
    settings: Settings, store: str, campaign_id: str, *, until: pd.Timestamp, staff: str = "operator",
    cost_per_contact: float | None = None, margin: float | None = None,
) -> dict[str, Any]:
    """What the campaign changed from its send date to ``until`` (inclusive), arm by arm.

    Members are counted if they still consent to marketing now (a customer who withdrew or was
    erased since the export is left out of both arms; the report says how many per arm).
    """
    from siloguard.marketing.experiment import CONTROL, TREATMENT, arm_outcomes, campaign_outcome, roi

    record, members = load_campaign(settings, store, campaign_id)
    send = pd.Timestamp(record.send_date)
    if until < send:
        raise ConfigError(f"--until {until.date()} is before the campaign's send date {record.send_date}")
    who = staff_principal(store, staff)
    gated = gated_frame(settings, store, who, MARKETING)
    frame = gated.frame
    live = set(frame["customer_id"].astype(str))
    kept = members[members["subject"].isin(live)]
    dropped = {arm: int(((members["arm"] == arm) & ~members["subject"].isin(live)).sum()) for arm in (TREATMENT, CONTROL)}
    window = frame[(frame["invoice_date"] >= send) & (frame["invoice_date"] < until + pd.Timedelta(days=1))]
    data_end = frame["invoice_date"].max() if len(frame) else None
    outcome = campaign_outcome(arm_outcomes(kept.rename(columns={"subject": "customer_id"}), window))
    report: dict[str, Any] = {
        "campaign": record.id,
        "store": store,
        "target": record.target,
        "as_of": record.as_of,
        "send_date": record.send_date,
        "until": str(until.date()),
        "days": int((until - send).days) + 1,
        "currency": record.currency,
        "control_share": record.control_share,
        "seed": record.seed,
        "no_longer_consenting": dropped,
        "data_ends": str(data_end.date()) if data_end is not None else None,
        "decision": gated.decision_id,
        **outcome.to_json(),
    }
    if cost_per_contact is not None:
        interval = roi(outcome, cost_per_contact=cost_per_contact, margin=margin if margin is not None else 1.0)
        report["roi"] = None if interval is None else {
            "cost_per_contact": cost_per_contact, "margin": margin if margin is not None else 1.0,
            "estimate": round(interval.estimate, 4), "low": round(interval.low, 4), "high": round(interval.high, 4),
        }
    return report
