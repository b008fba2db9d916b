"""A store's marketing KPI report: one HTML page with plots, and the same facts as JSON.

Built on the store's site from its gate (``siloguard store report``), so everything in it is
about customers who consent at that moment, and only as counts and aggregates (no customer
id, no row):

* segment sizes at each month end (RFM as of that day; customers with a live marketing consent);
* the distribution of customer lifetime value (expected spend in the next 90 days; consent
  to profiling) and the spending tiers and lifecycle stages;
* interests: customers per product group (TF-IDF + k-means on the shelf's descriptions);
* campaign results: each recorded campaign with a control group, measured to the end of the
  data (uplift in revenue per customer with its 95% interval);
* the model version the store holds and what it scored (its manifest).
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from siloguard.config import Settings
from siloguard.errors import SiloguardError

__all__ = ["build_kpis", "render_html"]


def _segments_over_time(frame: pd.DataFrame, months: int = 12) -> dict[str, Any]:
    from siloguard.recommender.segments import SEGMENTS, rfm_table

    if frame.empty:
        return {"months": [], "segments": {}}
    last = frame["invoice_date"].max().normalize() + pd.Timedelta(days=1)
    ends = sorted({(last - pd.DateOffset(months=i)).normalize() for i in range(months)})
    ends = [e for e in ends if (frame["invoice_date"] < e).any()]
    counts: dict[str, list[int]] = {s: [] for s in SEGMENTS}
    for end in ends:
        table = rfm_table(frame[frame["invoice_date"] < end], as_of=end)
        per = table["segment"].value_counts()
        for s in SEGMENTS:
            counts[s].append(int(per.get(s, 0)))
    return {"months": [str(e.date()) for e in ends], "segments": counts}


def build_kpis(settings: Settings, store: str, *, staff: str = "operator") -> dict[str, Any]:
    """The report's facts (JSON-ready)."""
    from siloguard.clients.marketing import (
        MARKETING,
        campaign_report,
        customer_profiles,
        customer_values,
        gated_frame,
        staff_principal,
        store_currency,
    )
    import sqlalchemy as sa

    from siloguard.clients.marketing import _engine
    from siloguard.storage.orm import campaigns

    who = staff_principal(store, staff)
    marketing = gated_frame(settings, store, who, MARKETING, columns=("customer_id", "invoice", "invoice_date", "quantity", "unit_price"))
    facts: dict[str, Any] = {
        "schema": "siloguard-store-kpis-v1",
        "store": store,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "currency": store_currency(settings),
        "data_ends": str(marketing.frame["invoice_date"].max().date()) if len(marketing.frame) else None,
        "marketing_consenting": int(marketing.frame["customer_id"].nunique()),
        "segments_over_time": _segments_over_time(marketing.frame),
        "decisions": [marketing.decision_id],
    }
    try:
        values, decision, as_of = customer_values(settings, store, staff=staff, days=90)
        spend = values["spend_90d"].to_numpy(float)
        edges = np.quantile(spend, np.linspace(0, 1, 11))
        facts["clv"] = {
            "as_of": as_of, "customers": len(values), "days": 90, "total": round(float(spend.sum()), 2),
            "deciles": [round(float(e), 2) for e in edges],
            "histogram": {"counts": np.histogram(spend, bins=20)[0].tolist(),
                          "edges": [round(float(e), 2) for e in np.histogram(spend, bins=20)[1]]},
        }
        facts["decisions"].append(decision)
    except SiloguardError as exc:
        facts["clv"] = {"unavailable": str(exc)}
    try:
        profiles = customer_profiles(settings, store, staff=staff)
        facts["profiles"] = {"as_of": profiles.as_of, **profiles.summary}
        facts["decisions"].append(profiles.decision)
    except SiloguardError as exc:
        facts["profiles"] = {"unavailable": str(exc)}
    results = []
    with _engine(settings.database.url).connect() as conn:
        rows = conn.execute(
            sa.select(campaigns.c.id, campaigns.c.send_date).where(campaigns.c.store == store, campaigns.c.control_share > 0)
            .order_by(campaigns.c.created_at)
        ).all()
    end = pd.Timestamp(facts["data_ends"]) if facts["data_ends"] else None
    for campaign_id, send in rows:
        if end is None or pd.Timestamp(send) > end:
            continue
        try:
            report = campaign_report(settings, store, campaign_id, until=end, staff=staff)
        except SiloguardError as exc:
            results.append({"campaign": campaign_id, "unavailable": str(exc)})
            continue
        results.append({k: report[k] for k in ("campaign", "target", "send_date", "until", "arms", "uplift")})
    facts["campaigns"] = results
    manifest = settings.work_dir / "model" / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
        overall = data.get("metrics", {}).get("overall", {})
        mine = data.get("metrics", {}).get("per_store", {}).get(store, {})
        facts["model"] = {"version": data.get("version"), "created": data.get("created"),
                          "overall": {k: overall.get(k) for k in ("ndcg@10", "hr@10", "new.ndcg@10")},
                          "this_store": {k: mine.get(k) for k in ("ndcg@10", "hr@10", "new.ndcg@10")}}
    except (OSError, ValueError, AttributeError):
        facts["model"] = {"unavailable": f"no model manifest at {manifest}"}
    return facts


# ---- rendering ------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode()


def _figure() -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.4), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _plots(facts: dict[str, Any]) -> list[tuple[str, str]]:
    plots = []
    seg = facts["segments_over_time"]
    if seg["months"]:
        fig, ax = _figure()
        bottom = np.zeros(len(seg["months"]))
        for name, counts in seg["segments"].items():
            ax.bar(range(len(counts)), counts, bottom=bottom, label=name)
            bottom += np.asarray(counts)
        ax.set_xticks(range(len(seg["months"])), seg["months"], rotation=45, fontsize=7)
        ax.set_ylabel("customers")
        ax.legend(fontsize=7, ncol=4)
        plots.append(("Segment sizes at each month end", _png(fig)))
    clv = facts.get("clv", {})
    if "histogram" in clv:
        fig, ax = _figure()
        edges = clv["histogram"]["edges"]
        ax.bar(edges[:-1], clv["histogram"]["counts"], width=np.diff(edges), align="edge")
        ax.set_xlabel(f"expected spend in the next {clv['days']} days ({facts['currency']})")
        ax.set_ylabel("customers")
        plots.append(("Customer lifetime value", _png(fig)))
    interests = facts.get("profiles", {}).get("interest", {})
    if interests:
        fig, ax = _figure()
        names = list(interests)[:12][::-1]
        ax.barh(names, [interests[n] for n in names])
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("customers with the group among their top interests")
        plots.append(("Interests", _png(fig)))
    measured = [c for c in facts.get("campaigns", []) if "uplift" in c]
    if measured:
        fig, ax = _figure()
        for i, c in enumerate(measured):
            u = c["uplift"]["revenue_per_customer"]["absolute"]
            ax.errorbar([u["estimate"]], [i], xerr=[[u["estimate"] - u["low"]], [u["high"] - u["estimate"]]], fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(measured)), [f"{c['campaign']} ({c['target']})" for c in measured], fontsize=7)
        ax.set_xlabel(f"uplift in revenue per customer ({facts['currency']}), 95% interval")
        plots.append(("Campaign results", _png(fig)))
    return plots


def render_html(facts: dict[str, Any]) -> str:
    """A self-contained page (plots inline as PNG)."""
    esc = html.escape
    plots = _plots(facts)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(facts['store'])}: marketing KPIs</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.muted{color:#777}</style></head>",
        f"<body data-plots='{len(plots)}'>",
        f"<h1>Store {esc(facts['store'])}: marketing KPIs</h1>",
        f"<p class='muted'>Generated {esc(facts['generated'])}; data to {esc(str(facts['data_ends']))}; prices in "
        f"{esc(facts['currency'])}. Only customers with a live consent at that moment are counted: "
        f"{facts['marketing_consenting']:,} for marketing.</p>",
    ]
    clv = facts.get("clv", {})
    if "total" in clv:
        parts.append(f"<p>Expected spend of the {clv['customers']:,} customers consenting to profiling in the next "
                     f"{clv['days']} days: <b>{clv['total']:,.2f} {esc(facts['currency'])}</b> (median "
                     f"{clv['deciles'][5]:,.2f}).</p>")
    prof = facts.get("profiles", {})
    for key in ("tier", "stage"):
        if key in prof:
            rows = "".join(f"<tr><td>{esc(k)}</td><td>{v:,}</td></tr>" for k, v in prof[key].items())
            parts.append(f"<h3>{key}</h3><table><tr><th>{key}</th><th>customers</th></tr>{rows}</table>")
    camp = facts.get("campaigns", [])
    if camp:
        rows = []
        for c in camp:
            if "uplift" not in c:
                rows.append(f"<tr><td>{esc(c['campaign'])}</td><td colspan='4'>{esc(c['unavailable'])}</td></tr>")
                continue
            conv = c["uplift"]["conversion"]["absolute"]
            rev = c["uplift"]["revenue_per_customer"]["absolute"]
            rows.append(
                f"<tr><td>{esc(c['campaign'])} ({esc(c['target'])})</td><td>{esc(c['send_date'])} .. {esc(c['until'])}</td>"
                f"<td>{c['arms']['treatment']['customers']:,} / {c['arms']['control']['customers']:,}</td>"
                f"<td>{conv['estimate']:+.1%} [{conv['low']:+.1%}, {conv['high']:+.1%}]</td>"
                f"<td>{rev['estimate']:+,.2f} [{rev['low']:+,.2f}, {rev['high']:+,.2f}]</td></tr>"
            )
        parts.append("<h2>Campaigns</h2><table><tr><th>campaign</th><th>measured</th><th>treatment / control</th>"
                     "<th>conversion uplift [95%]</th><th>revenue/customer uplift [95%]</th></tr>" + "".join(rows) + "</table>")
    model = facts.get("model", {})
    if "version" in model:
        parts.append(f"<h2>Model</h2><p>Version {esc(str(model['version']))} ({esc(str(model['created']))}): NDCG@10 "
                     f"{model['this_store'].get('ndcg@10') or float('nan'):.4f} on this store's test customers, "
                     f"{model['overall'].get('ndcg@10') or float('nan'):.4f} over all stores.</p>")
    for title, data in plots:
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}' width='900'>")
    parts.append("<p class='muted'>The same facts are in the JSON file next to this one (schema siloguard-store-kpis-v1).</p>")
    parts.append(
        "<script>window.addEventListener('load',function(){var ok=Array.prototype.filter.call(document.images,"
        "function(i){return i.complete&&i.naturalWidth>0;});document.body.setAttribute('data-plots-rendered',String(ok.length));});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
