"""The records of processing activities (GDPR Art. 30(1)) as a document.

Built from ``processing.yaml`` with what the data maps already say filled in, so the export
and the gate cannot disagree: the lawful basis of each purpose, the personal-data categories
of the columns read, and each dataset's retention (the erasure time limit). ``to_markdown``
and ``to_html`` give the document an officer files; the JSON form has the same fields.
"""

from __future__ import annotations

from typing import Any

from siloguard.compliance.checks import activity_categories
from siloguard.compliance.context import Context

__all__ = ["ART30_FIELDS", "MISSING", "build_ropa", "to_html", "to_markdown"]

#: Art. 30(1) point -> the key of the activity's record that answers it.
ART30_FIELDS: dict[str, str] = {
    "(a) name and contact details of the controller": "controller",
    "(b) purposes of the processing": "purposes",
    "(c) categories of data subjects": "data_subjects",
    "(c) categories of personal data": "data_categories",
    "(d) categories of recipients": "recipients",
    "(e) transfers to third countries and safeguards": "transfers",
    "(f) time limits for erasure": "erasure",
    "(g) technical and organisational security measures": "security",
}


def build_ropa(ctx: Context) -> dict[str, Any]:
    """Every activity's Art. 30(1) record, as JSON-ready data."""
    records = ctx.records
    activities = []
    for act in records.activities.values():
        purposes = []
        for purpose in act.purposes:
            bases = sorted(
                {dm.lawful_basis(purpose) or "undeclared" for _, dm, _, p in ctx.flows(act) if p == purpose and dm is not None}
            ) or [act.lawful_basis or "undeclared"]
            purposes.append({"purpose": purpose, "lawful_basis": ", ".join(bases)})
        retention = {d: ctx.datamaps[d].retention for d in act.datasets if d in ctx.datamaps}
        mechanisms = (
            [
                {"store": m.store, "mechanism": m.mechanism, "reference": m.reference, "since": m.since.isoformat()}
                for m in records.transfers.values()
            ]
            if act.federation_training
            else []
        )
        activities.append(
            {
                "id": act.id,
                "name": act.name,
                "description": act.description,
                "controller": dict(act.controller or records.controller),
                "purposes": purposes,
                "data_subjects": list(act.data_subjects),
                "data_categories": sorted(activity_categories(ctx, act)),
                "datasets": {d: list(c) for d, c in act.datasets.items()},
                "recipients": list(act.recipients),
                "transfers": {"summary": act.transfers, "coordinator_country": records.coordinator_country, "mechanisms": mechanisms},
                "erasure": {"summary": act.erasure, "retention": retention},
                "security": list(act.security),
                "dpia": act.dpia,
            }
        )
    return {
        "document": "Records of processing activities (GDPR Art. 30(1))",
        "generated_at": ctx.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "adequacy_source": records.adequacy.source,
        "activities": activities,
    }


#: Shown for an empty Art. 30 field (records-of-processing fails on it).
MISSING = "NOT RECORDED"


def _lines(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(str(v) for v in value) if value else MISSING
    return str(value) if value else MISSING


def _rows(act: dict[str, Any]) -> dict[str, str]:
    """An activity's Art. 30(1) points in words (the same for every format)."""
    from siloguard.policies.taxonomy import purpose_name

    controller = act["controller"]
    transfers = act["transfers"]
    mechanisms = "; ".join(
        f"store {m['store']}: {m['mechanism']} ({m['reference']}, since {m['since']})" for m in transfers["mechanisms"]
    )
    retention = "; ".join(f"{d}: {r} (ISO 8601)" for d, r in act["erasure"]["retention"].items())
    return {
        "(a) name and contact details of the controller": "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in controller.items()),
        "(b) purposes of the processing": "; ".join(
            f"{purpose_name(p['purpose'])} [{p['purpose']}] (lawful basis: {p['lawful_basis']})" for p in act["purposes"]),
        "(c) categories of data subjects": _lines(act["data_subjects"]),
        "(c) categories of personal data": _lines(act["data_categories"]),
        "(d) categories of recipients": _lines(act["recipients"]),
        "(e) transfers to third countries and safeguards": _lines(transfers["summary"])
        + (f"; coordinator in {transfers['coordinator_country']}; {mechanisms}" if mechanisms else ""),
        "(f) time limits for erasure": "; ".join(x for x in (act["erasure"]["summary"], retention) if x) or MISSING,
        "(g) technical and organisational security measures": _lines(act["security"]),
        "DPIA": act["dpia"] or "not required",
    }


def to_markdown(ropa: dict[str, Any]) -> str:
    out = [f"# {ropa['document']}", "", f"Generated {ropa['generated_at']} by `siloguard check ropa`.", ""]
    for act in ropa["activities"]:
        rows = _rows(act)
        out += [f"## {act['name']} (`{act['id']}`)", ""]
        if act["description"]:
            out += [act["description"], ""]
        out += ["| Art. 30(1) | record |", "|---|---|"]
        out += [f"| {k} | {v.replace('|', '/')} |" for k, v in rows.items()]
        out += [""]
    return "\n".join(out)


def to_html(ropa: dict[str, Any]) -> str:
    """The same document as a page to read, print or file (no script, no asset from elsewhere)."""
    from siloguard._files import templates

    env = templates("siloguard.compliance")
    activities = [{**act, "rows": _rows(act)} for act in ropa["activities"]]
    return env.get_template("ropa.html.j2").render(ropa=ropa, activities=activities, missing=MISSING)
