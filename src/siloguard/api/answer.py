"""An access answer (GDPR Art. 15 / CCPA right to know) as a page a person can read.

``GET /v1/requests/{id}/access?format=html`` returns this page: the same answer as the JSON,
in plain words, with the JSON itself inside (``<script type="application/json"
id="answer-json">``) so that the subject, who can take the answer once, keeps both. The page
has no script, no style sheet and no image from elsewhere; Jinja escapes every value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Any

from markupsafe import Markup

from siloguard._files import templates

from siloguard.policies.taxonomy import purpose_name

__all__ = ["ENV", "STYLE", "render_answer", "standalone_headers", "style_hash"]

ENV = templates("siloguard.api")
#: The answer page's inline style sheet, exactly as the page carries it (the centre's policy allows it by hash).
STYLE = ENV.get_template("answer.css").render()
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?$")
_BASES = {
    "consent": "your consent (Art. 6(1)(a))",
    "contract": "a contract with you (Art. 6(1)(b))",
    "legal_obligation": "a legal obligation (Art. 6(1)(c))",
    "vital_interests": "vital interests (Art. 6(1)(d))",
    "public_task": "a public task (Art. 6(1)(e))",
    "legitimate_interests": "the store's legitimate interests (Art. 6(1)(f))",
}


def style_hash() -> str:
    """The CSP source that allows :data:`STYLE` (and no other inline style)."""
    return "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()


def standalone_headers() -> dict[str, str]:
    """Headers of the page when fetched on its own: nothing runs, nothing loads, nothing caches."""
    return {
        "content-security-policy": f"default-src 'none'; style-src '{style_hash()}'; base-uri 'none'; frame-ancestors 'self'",
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
        "content-disposition": "inline; filename=\"my-data.html\"",
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _period(iso: str) -> str:
    """``P6Y`` -> ``6 years``; other forms as written."""
    match = _DURATION.match(iso or "")
    if not match or not any(match.groups()):
        return iso
    parts = [_plural(int(n), w) for n, w in zip(match.groups(), ("year", "month", "day")) if n]
    return ", ".join(parts)


def _json_for_script(answer: dict[str, Any]) -> str:
    """JSON that cannot end the script element it sits in (``<`` escaped), marked safe for Jinja."""
    text = json.dumps(answer, indent=2, sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_answer(request_id: str, answer: dict[str, Any], *, now: datetime) -> str:
    """The page for an unsealed answer (sealed answers are opened by the subject's own key)."""
    full = {"request": request_id, "answer": answer}
    purposes = [{"key": p["purpose"], "name": purpose_name(p["purpose"]), "basis": _BASES.get(p["lawful_basis"], p["lawful_basis"])}
                for p in answer.get("purposes", [])]
    consent = [
        {"store": s["store"], "purposes": [{**p, "name": purpose_name(p["purpose"])} for p in s.get("purposes", [])]}
        for s in answer.get("consent", [])
    ]
    stores = []
    for entry in answer.get("stores", []):  # a store's part is checked for shape, not for every key: read it leniently
        rows = [r for r in entry.get("data", []) if isinstance(r, dict)]
        columns = list(dict.fromkeys(c for r in rows for c in r))  # every column any row has, in first-seen order
        categories = [{"category": str(c.get("category", "")), "columns": [str(x) for x in c.get("columns", []) or []]}
                      for c in entry.get("categories", []) if isinstance(c, dict)]
        stores.append({"store": str(entry.get("store", "")), "records": int(entry.get("records", len(rows)) or 0),
                       "categories": categories, "columns": columns, "rows": [{c: r.get(c) for c in columns} for r in rows]})
    return ENV.get_template("answer.html.j2").render(
        request_id=request_id,
        generated=now.strftime("%Y-%m-%d %H:%M UTC"),
        subject=answer.get("subject", {}),
        records=int(answer.get("records", 0)),
        purposes=purposes,
        retention=_period(str(answer.get("retention", ""))),
        recipients=answer.get("recipients", []),
        source=answer.get("source", ""),
        profiling=answer.get("profiling", ""),
        rights=answer.get("rights", []),
        consent=consent,
        stores=stores,
        answer_json=Markup(_json_for_script(full)),  # noqa: S704  escaped above: it cannot close the script element
    )
