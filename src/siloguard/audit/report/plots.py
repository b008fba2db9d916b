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


def _privacy_budget(section: dict[str, Any]) -> bytes:
    fig, ax = _figure()
    for store in section["stores"]:
        rounds = [r["round"] for r in store["rounds"]]
        eps = [r["cumulative_epsilon_e6"] / 1e6 for r in store["rounds"]]
        ax.plot(rounds, eps, marker="o", label=store["store"])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("federated round")
    ax.set_ylabel("cumulative epsilon")
    ax.set_title("Privacy budget spent per store over rounds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
