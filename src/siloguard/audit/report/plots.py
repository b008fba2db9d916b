"""The report's plots, as PNG bytes (matplotlib's object API, no pyplot global state)."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["render_plots"]

_MAX_SERIES = 8
_W, _H, _DPI = 9.0, 3.6, 100


def _figure(height: float = _H) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_W, height), dpi=_DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _events_by_type(section: dict[str, Any]) -> bytes:
    fig, ax = _figure()
    days = section["days"]
    series = section["actions"][:_MAX_SERIES]
    rest = section["actions"][_MAX_SERIES:]
    if rest:
        series = [*series, {"action": f"other ({len(rest)} actions)",
                            "per_day": [sum(a["per_day"][i] for a in rest) for i in range(len(days))]}]
    x = range(len(days))
    bottom = [0] * len(days)
    for s in series:
        ax.bar(x, s["per_day"], bottom=bottom, label=s["action"], width=0.8)
        bottom = [b + n for b, n in zip(bottom, s["per_day"])]
    step = max(1, len(days) // 12)
    ax.set_xticks(list(x)[::step], days[::step], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("events")
    ax.set_title("Audit events by type and day (UTC)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _gate_decisions(section: dict[str, Any]) -> bytes:
    rows = section["by_principal_purpose"][:20]
    fig, ax = _figure(height=min(_H * 2, 1.4 + 0.35 * len(rows)))
    labels = [f"{r['actor']} / {r['purpose']}" for r in rows]
    y = range(len(rows))
    allow = [r["allow"] for r in rows]
    deny = [r["deny"] for r in rows]
    ax.barh(y, allow, label="allow", color="#3a7d44")
    ax.barh(y, deny, left=allow, label="deny", color="#b23a48")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("decisions")
    ax.set_title("Gate decisions by principal and purpose")
    ax.legend(fontsize=8)
    return _png(fig)


_MAX_PANELS = 12


def _privacy_budget(section: dict[str, Any]) -> bytes:
    """One small panel per store (the highest spenders first when there are many): its spend over
    the rounds it trained, its cap as a dashed line, its total written at the end. Stores whose
    spends are nearly equal would hide each other on one chart; side by side none is hidden."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stores = sorted(section["stores"], key=lambda s: (-s["total_epsilon_e6"], s["store"]))[:_MAX_PANELS]
    columns = min(4, len(stores))
    rows = -(-len(stores) // columns)
    fig = Figure(figsize=(_W, 0.6 + 2.0 * rows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    caps = [s["cap_epsilon_e6"] / 1e6 for s in stores if s.get("cap_epsilon_e6")]
    top = max([s["total_epsilon_e6"] / 1e6 for s in stores] + caps + [1e-9]) * 1.18
    last_round = max(r["round"] for s in stores for r in s["rounds"])
    for ax, store in zip(axes.flat, stores):
        rounds = [r["round"] for r in store["rounds"]]
        eps = [r["cumulative_epsilon_e6"] / 1e6 for r in store["rounds"]]
        ax.plot(rounds, eps, marker="o", markersize=3, linewidth=1.5, color="#1a5fb4")
        cap = store["cap_epsilon_e6"] / 1e6 if store.get("cap_epsilon_e6") else None
        if cap is not None:
            ax.axhline(cap, color="#b23a48", linestyle=(0, (5, 3)), linewidth=1.1)
        near = cap is not None and eps[-1] >= 0.9 * cap
        ax.set_title(f"{store['store']}: {eps[-1]:.2f}" + (f" of {cap:g}" if cap is not None else ""), fontsize=9,
                     color="#b23a48" if near else "#1b1b1b")
        ax.set_ylim(0, top)
        ax.set_xlim(0.5, last_round + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(stores):]:
        ax.set_visible(False)
    fig.supxlabel("federated round", fontsize=9)
    fig.supylabel("epsilon spent (customer level)", fontsize=9)
    deltas = sorted({s["delta"] for s in stores if s.get("delta")})
    more = len(section["stores"]) - len(stores)
    fig.suptitle("Privacy budget spent per store over rounds; dashed: the store's cap"
                 + (f"; delta {deltas[0]:.0e}" if len(deltas) == 1 else "")
                 + (f" ({more} more stores in the table)" if more > 0 else ""), fontsize=10)
    return _png(fig)


def render_plots(facts: dict[str, Any]) -> dict[str, bytes]:
    """PNG per plot name, only for sections that have data."""
    out: dict[str, bytes] = {}
    if facts["events_by_type"]["status"] == "ok":
        out["events_by_type"] = _events_by_type(facts["events_by_type"])
    if facts["gate_decisions"]["status"] == "ok":
        out["gate_decisions"] = _gate_decisions(facts["gate_decisions"])
    if facts["privacy_budget"]["status"] == "ok":
        out["privacy_budget"] = _privacy_budget(facts["privacy_budget"])
    return out
