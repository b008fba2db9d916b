"""``siloguard check``, ``siloguard check ropa`` and ``siloguard retention enforce``.

``check_app`` and ``retention_app`` are mounted by ``siloguard.cli``. Every command builds one
:class:`~siloguard.config.Settings` from its options (over ``SILOGUARD_*`` variables) and
passes it down. ``siloguard check`` exits 1 when an error-severity rule fails; bad options or
rule files exit with their error's code (2 for settings, ...), one line, never a traceback.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.errors import ConfigError
from siloguard.storage.cli import DbOpt, command_group, one_line_errors

__all__ = ["check_app", "retention_app"]

check_app = command_group(
    "check",
    "GDPR/CCPA checks of the data maps, records, consent, requests, budget, audit log and federation.",
    invoke_without_command=True,
)
retention_app = command_group("retention", "Storage limitation: delete rows kept past their retention (through the gate).")


class CheckFormat(str, Enum):
    table = "table"
    json = "json"


class RopaFormat(str, Enum):
    markdown = "markdown"
    json = "json"
    html = "html"


OutOpt = Annotated[
    Optional[Path],
    typer.Option("--run", help="A run's work directory (e.g. runs/demo): its stores and, unless --db or "
                 "SILOGUARD_DATABASE__URL, its siloguard.db. \\[default: settings work_dir and database.url]"),
]
AsOfOpt = Annotated[
    Optional[str],
    typer.Option("--as-of", help="Clock for the age of stored rows: now, data (the latest invoice in the stores) "
                 "or YYYY-MM-DD[THH:MM]. \\[default: settings compliance.as_of, i.e. now]"),
]


def _run_clock(out: Path) -> str | None:
    """The clock a prepared run asks for (``run.json``: ``"data"`` for the historical sample)."""
    from siloguard.runs import SITE_FILE, RunManifest, site_info

    if (Path(out) / SITE_FILE).is_file():  # a store's site
        return site_info(out).get("compliance_as_of")
    if (Path(out) / "coordinator").is_dir() and not (Path(out) / RunManifest.FILE).is_file():
        out = Path(out) / "coordinator"  # a run laid out on one machine: the coordinator's
    try:
        return RunManifest.read(out).compliance_as_of
    except ConfigError:
        return None


def _settings(*, out: Path | None, db: str | None, as_of: str | None) -> Settings:
    base = Settings.build()
    if out is not None:
        from siloguard.runs import run_settings

        if not Path(out).is_dir():
            raise ConfigError(f"--run {out}: no such directory; pass a run (as siloguard demo/train made it) or a store's site")

        # The run's database and the stores' keys live in its work directory by default.
        base = run_settings(out, base)
        if as_of is None and "SILOGUARD_COMPLIANCE__AS_OF" not in os.environ:
            as_of = _run_clock(out)
    clock: Any = None
    if as_of is not None and as_of != "now":
        if as_of == "data":
            clock = "data"
        else:
            try:
                clock = datetime.fromisoformat(as_of)
            except ValueError:
                raise ConfigError(f"--as-of {as_of!r}: use now, data or a date such as 2011-12-09 or 2011-12-09T12:00") from None
    settings = base.with_overrides(database={"url": db}, compliance={"as_of": clock})
    if as_of == "now":  # explicit: override an environment variable setting another clock
        data = settings.model_dump()
        data["compliance"]["as_of"] = None
        settings = Settings.model_validate(data)
    return settings


def _print_table(results: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    styles = {"passed": "green", "failed": "bold red", "warning": "yellow", "not_applicable": "dim", "info": "dim"}
    table = Table(title="GDPR/CCPA checks", title_justify="left", show_lines=True)
    for column in ("rule", "severity", "result", "legal source", "finding / fix"):
        table.add_column(column, overflow="fold")
    for res in results:
        text = "\n".join(res.outcome.findings)
        if res.outcome.status in ("failed", "warning"):
            text += f"\n[bold]fix:[/] {res.rule.fix}"
        table.add_row(res.rule.id, res.rule.severity, f"[{styles[res.status]}]{res.status.replace('_', ' ')}[/]",
                      "; ".join(res.rule.source), text)
    Console(width=max(120, Console().width)).print(table)


@check_app.callback()
@one_line_errors
def check(
    ctx: typer.Context,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only this rule (repeatable).")] = None,
    fmt: Annotated[CheckFormat, typer.Option("--format", help="table or json.")] = CheckFormat.table,
    out: OutOpt = None,
    db: DbOpt = None,
    as_of: AsOfOpt = None,
    record: Annotated[bool, typer.Option("--record/--no-record", help="Append the results to the audit log (the officer report shows them).")] = True,
) -> None:
    """Run the GDPR/CCPA rules; exit 1 if a rule of severity error fails."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"out": out, "db": db, "as_of": as_of}
        return
    from siloguard.audit.vocabulary import COMPLIANCE_CHECK
    from siloguard.compliance.context import Context
    from siloguard.compliance.engine import audit_events, evaluate, failed_errors, select_rules
    from siloguard.compliance.rules import load_rules

    settings = _settings(out=out, db=db, as_of=as_of)
    rules = select_rules(load_rules(settings.compliance.rules), scope="check", only=only or ())
    context = Context(settings)
    try:
        from rich.console import Console

        with Console(stderr=True).status(f"Checking {len(rules)} GDPR/CCPA rules..."):
            results = evaluate(context, rules)
        if record:
            from siloguard.audit.log import AuditLog

            _ = context.engine  # migrated
            with AuditLog.open(settings) as log:
                log.append(audit_events(results, actor="compliance:check", action=COMPLIANCE_CHECK))
    finally:
        context.close()
    if fmt is CheckFormat.json:
        errors = failed_errors(results)
        typer.echo(json.dumps({"passed": not errors, "failed": [r.rule.id for r in errors],
                               "rules": [r.to_json() for r in results]}, indent=2))
    else:
        _print_table(results)
        typer.echo(summary_line(results, settings.work_dir))
    if failed_errors(results):
        raise typer.Exit(1)


def summary_line(results: list[Any], where: Path) -> str:
    """One line after the table: how many rules ended how, and what was checked."""
    from collections import Counter

    counts = Counter(r.status for r in results)
    parts = [f"{counts.get(k, 0)} {label}" for k, label in (("passed", "passed"), ("failed", "failed"),
                                                              ("warning", "warnings"), ("not_applicable", "not applicable"))]
    verdict = "FAILED" if any(r.is_error for r in results) else "OK"
    return f"{verdict}: {len(results)} rules on {where}: " + ", ".join(parts)


@check_app.command("ropa")
@one_line_errors
def ropa(
    ctx: typer.Context,
    fmt: Annotated[RopaFormat, typer.Option("--format", help="markdown, json or html (a page to read, print or file).")] = RopaFormat.markdown,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the document to this file (atomically) instead of stdout.")] = None,
) -> None:
    """Export the records of processing activities (GDPR Art. 30(1)) as a document."""
    from siloguard.compliance.context import Context
    from siloguard.compliance.ropa import build_ropa, to_html, to_markdown

    opts = ctx.obj or {}
    context = Context(_settings(out=opts.get("out"), db=opts.get("db"), as_of=opts.get("as_of")))
    document = build_ropa(context)
    render = {RopaFormat.json: lambda d: json.dumps(d, indent=2) + "\n", RopaFormat.markdown: to_markdown, RopaFormat.html: to_html}
    text = render[fmt](document)
    if out_file is None:
        typer.echo(text)
        return
    if out_file.is_dir() or not out_file.parent.is_dir():
        raise ConfigError(f"{out_file}: give a file name in an existing directory")
    write_atomic(out_file, text.encode("utf-8"))
    typer.echo(f"records of processing ({len(document['activities'])} activities) written to {out_file}")


@retention_app.command("enforce")
@one_line_errors
def enforce(
    out: OutOpt = None,
    db: DbOpt = None,
    as_of: AsOfOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count the rows past retention; delete nothing.")] = False,
) -> None:
    """Delete every store's rows older than their retention, through the store's gate (audited)."""
    from siloguard.compliance.context import Context
    from siloguard.compliance.retention import enforce_retention

    context = Context(_settings(out=out, db=db, as_of=as_of))
    try:
        results = enforce_retention(context, dry_run=dry_run)
        clock = context.data_clock()
    finally:
        context.close()
    verb = "would delete" if dry_run else "deleted"
    for r in results:
        typer.echo(f"{r.store}: {r.expired} of {r.rows} rows past retention; {verb} {r.expired if dry_run else r.deleted}")
    typer.echo(f"clock: {clock:%Y-%m-%d %H:%M} UTC")
