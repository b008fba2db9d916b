"""The compliance officer's report: ``report.html`` (Jinja2, plots embedded as PNG) and
``report.json`` (the same facts, validated against ``report.schema.json``).

:func:`build_report` first verifies the whole log (refusing to report on one that fails),
then computes the facts from the events the latest signed head covers; :func:`write_report`
writes both files only once everything rendered and validated.

Data subjects appear in events only as blinded references ``subject:b.<hex>``. Given a
resolver (``subjects``: does this ``b.<hex>`` still resolve, i.e. does the subject's key
still exist?), the report shows the decisions of erased subjects under ``erased-subject``;
without one it shows the references as recorded and says they were not resolved.
:func:`siloguard.privacy.keys.subject_resolver` builds one from a key store directory (never
creating keys): this package reads no keys itself.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siloguard._files import write_atomic
from siloguard.audit.heads import SignedTreeHead
from siloguard.audit.report.facts import ERASED_SUBJECT, NO_DATA, SubjectResolver, collect
from siloguard.errors import AuditError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from siloguard.audit.log import AuditLog

__all__ = [
    "ERASED_SUBJECT",
    "NO_DATA",
    "Report",
    "SubjectResolver",
    "build_report",
    "report_schema",
    "validate_facts",
    "write_report",
]

REPORT_FORMAT = "siloguard-audit-report-v1"


@dataclass(frozen=True)
class Report:
    facts: dict[str, Any]
    plots: dict[str, bytes]  # PNG by plot name
    html: str


@cache
def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) report.json follows."""
    text = resources.files(__package__).joinpath("report.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_facts(facts: dict[str, Any]) -> None:
    """Raise :class:`AuditError` naming the first place ``facts`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema(), format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(facts))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise AuditError(f"report facts do not match the report schema at {where}: {error.message[:200]}")


def build_report(
    log: AuditLog,
    public_key: Ed25519PublicKey,
    *,
    against: SignedTreeHead | None = None,
    subjects: SubjectResolver | None = None,
    subject_stores: Collection[str] | None = None,
    purpose_name: Callable[[str], str] | None = None,
) -> Report:
    """Verify the log, then build the report for its latest signed head.

    ``purpose_name`` gives plain words for a purpose key (the command passes the taxonomy's;
    the page shows both, the JSON keeps the keys).

    ``subjects`` says whether a blinded subject reference ``b.<hex>`` still resolves (None:
    no store keys, references are shown unresolved); ``subject_stores`` optionally names the
    stores whose keys it holds, so events of other stores are not taken for erased subjects.
    """
    verified = log.verify(public_key, against=against)
    head = verified.latest_head
    if head is None:
        raise AuditError("the audit log has no signed tree head yet: sign one with `siloguard audit head`")
    events = (json.loads(stored.body) for stored in log.iter_events(0, head.tree_size))
    facts: dict[str, Any] = {"report": REPORT_FORMAT, "generated_at": _now()}
    facts.update(
        collect(events, head, after_head=verified.uncovered, subjects=subjects, subject_stores=subject_stores)
    )
    facts["log"].update(
        {"verified": True, "heads_verified": verified.heads_checked, "against": None if against is None else against.to_json()}
    )
    from siloguard.audit.report.plots import render_plots

    plots = render_plots(facts)
    facts["plots"] = sorted(plots)
    validate_facts(facts)
    return Report(facts, plots, _render_html(facts, plots, purpose_name or (lambda key: key)))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _render_html(facts: dict[str, Any], plots: dict[str, bytes], purpose_name: Callable[[str], str]) -> str:
    from siloguard._files import templates

    return templates("siloguard.audit.report").get_template("report.html.j2").render(
        facts=facts,
        head=facts["tree_head"],
        log=facts["log"],
        subjects=facts["subjects"],
        generated_at=facts["generated_at"],
        purpose_name=purpose_name,
        plots={name: base64.b64encode(png).decode("ascii") for name, png in plots.items()},
    )


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir`` (each file replaced atomically)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AuditError(f"{out_dir} exists and is not a directory: choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "report.html", out_dir / "report.json"
    write_atomic(json_path, (json.dumps(report.facts, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    write_atomic(html_path, report.html.encode("utf-8"))
    return html_path, json_path
