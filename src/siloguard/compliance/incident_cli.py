"""``siloguard incident open|update|notify|close|list``: the incident register from the command line.

Every command takes ``--run`` (the run whose privacy-service database and audit log hold the
register; the stores' jurisdictions come from its ``run.json``) like ``siloguard check``.
"""

from __future__ import annotations

import getpass
import json
import re
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from siloguard.compliance.incidents import KINDS, PARTIES, RISKS, SEVERITIES
from siloguard.errors import IncidentError
from siloguard.storage.cli import DbOpt, command_group, one_line_errors

__all__ = ["incident_app"]

incident_app = command_group(
    "incident",
    "Personal-data breaches: open, update, notify, close, list, with the legal clocks (GDPR Art. 33/34, Cal. Civ. Code 1798.82).",
)

RunOpt = Annotated[Optional[Path], typer.Option("--run", help="The run (e.g. runs/demo): its database, audit log and stores' jurisdictions.")]


# The choices, from the register's own vocabulary (one list: compliance.incidents).
Kind = Enum("Kind", {k: k for k in KINDS}, type=str)  # type: ignore[misc]
Level = Enum("Level", {k: k for k in SEVERITIES}, type=str)  # type: ignore[misc]
Risk = Enum("Risk", {k: k for k in RISKS}, type=str)  # type: ignore[misc]
Party = Enum("Party", {k: k for k in PARTIES}, type=str)  # type: ignore[misc]


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise IncidentError(f"{option} {value!r}: a date and time such as 2026-12-01T09:30 (UTC unless it says +hh:mm)") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _actor() -> str:
    """``officer:<login>`` (ids only: a login name made safe for the audit log)."""
    try:
        login = getpass.getuser()
    except Exception:  # noqa: BLE001  no login name (a container): still an officer
        login = "unknown"
    return "officer:" + (re.sub(r"[^a-z0-9_-]", "-", login.lower())[:32] or "unknown")


class _Opened:
    """The register and its audit log for one command, closed after it."""

    def __init__(self, run: Path | None, db: str | None) -> None:
        from siloguard.audit.log import AuditLog
        from siloguard.compliance.cli import _settings
        from siloguard.compliance.incidents import IncidentRegister
        from siloguard.storage.db import create_engine, require_current_schema

        self.settings = _settings(out=run, db=db, as_of=None)
        self.engine = create_engine(self.settings.database.url)
        require_current_schema(self.engine)
        self.audit = AuditLog.open(self.settings)
        self.register = IncidentRegister(self.engine, self.audit, default_jurisdiction=self.settings.api.default_jurisdiction)

    def jurisdictions(self) -> dict[str, str]:
        from siloguard.errors import ConfigError
        from siloguard.runs import RunManifest

        try:
            run = RunManifest.read(self.settings.work_dir)
        except ConfigError:
            return {}
        return {s: run.jurisdictions.get(s, self.settings.api.default_jurisdiction) for s in run.names}

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.audit.close()
        self.engine.dispose()


def _show(incident: object, now: datetime) -> None:
    from rich.console import Console
    from rich.table import Table

    data = incident.to_json(now)  # type: ignore[attr-defined]
    console = Console(width=max(120, Console().width))
    console.print(f"[bold]{data['id']}[/]  {data['kind']} breach, severity {data['severity']}, risk {data['risk']}, "
                  f"{data['subjects']} people, {data['records']} records, stores {', '.join(data['stores'])} "
                  f"({', '.join(data['jurisdictions'])}){'  [dim]closed[/]' if data['closed_at'] else ''}")
    if not data["notifications"]:
        console.print("No notification is due (risk unlikely): document the breach and why (GDPR Art. 33(5)).")
        return
    table = Table(show_header=True, box=None)
    for column in ("notify", "law", "due by (UTC)", "state", "source"):
        table.add_column(column, overflow="fold")
    colours = {"due": "yellow", "overdue": "bold red", "made": "green", "made late": "red"}
    for n in data["notifications"]:
        due = datetime.fromisoformat(n["due_at"])
        left = due - now
        hours = left.total_seconds() / 3600
        state = n["state"] + (f", {hours:.0f} h left" if n["state"] == "due" else "")
        table.add_row(n["to"], n["jurisdiction"].upper(), due.strftime("%Y-%m-%d %H:%M"), f"[{colours[n['state']]}]{state}[/]",
                      n["source"] + ("" if n["statutory"] else " [dim](time set by us)[/]"))
    console.print(table)


@incident_app.command("open")
@one_line_errors
def open_incident(
    kind: Annotated[Kind, typer.Option("--kind", help="What was breached: confidentiality (disclosed), integrity (altered), availability (lost).")],
    risk: Annotated[Risk, typer.Option("--risk", help="Risk to people: unlikely (no notification, documented), risk (authority), high (authority and people).")],
    store: Annotated[list[str], typer.Option("--store", help="An affected store (repeatable).")],
    summary: Annotated[str, typer.Option("--summary", help="What happened, without anyone's data (3-500 characters).")],
    severity: Annotated[Level, typer.Option("--severity", help="Internal severity.")] = Level["medium"],
    aware_at: Annotated[Optional[str], typer.Option("--aware-at", help="When you became aware (the clocks start here). \\[default: now]")] = None,
    subjects: Annotated[int, typer.Option("--subjects", help="People affected (an estimate; update it later).", min=0)] = 0,
    records: Annotated[int, typer.Option("--records", help="Records affected (an estimate).", min=0)] = 0,
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Record a personal-data breach and start its notification clocks."""
    with _Opened(run, db) as opened:
        incident = opened.register.open(kind=kind.value, severity=severity.value, risk=risk.value,
                                        aware_at=_when(aware_at, "--aware-at"), stores=store, subjects=subjects, records=records,
                                        summary=summary, jurisdictions=opened.jurisdictions(), actor=_actor())
        _show(incident, opened.register.clock())


@incident_app.command("update")
@one_line_errors
def update_incident(
    incident_id: Annotated[str, typer.Argument(help="The incident (incident list shows them).")],
    severity: Annotated[Optional[Level], typer.Option("--severity")] = None,
    risk: Annotated[Optional[Risk], typer.Option("--risk", help="A new risk level recomputes which notifications are due.")] = None,
    subjects: Annotated[Optional[int], typer.Option("--subjects", min=0)] = None,
    records: Annotated[Optional[int], typer.Option("--records", min=0)] = None,
    summary: Annotated[Optional[str], typer.Option("--summary")] = None,
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Change what is known about an incident (the clocks still run from awareness)."""
    with _Opened(run, db) as opened:
        incident = opened.register.update(incident_id, actor=_actor(), severity=severity.value if severity else None,
                                          risk=risk.value if risk else None, subjects=subjects, records=records, summary=summary)
        _show(incident, opened.register.clock())


@incident_app.command("notify")
@one_line_errors
def notify_incident(
    incident_id: Annotated[str, typer.Argument(help="The incident.")],
    to: Annotated[Party, typer.Option("--to", help="Who was told: authority (supervisory authority / Attorney General) or subjects.")],
    at: Annotated[Optional[str], typer.Option("--at", help="When they were told. \\[default: now]")] = None,
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Record that the authority or the people affected were notified."""
    with _Opened(run, db) as opened:
        incident = opened.register.notify(incident_id, to.value, actor=_actor(), at=_when(at, "--at"))
        _show(incident, opened.register.clock())


@incident_app.command("close")
@one_line_errors
def close_incident(
    incident_id: Annotated[str, typer.Argument(help="The incident.")],
    reason: Annotated[str, typer.Option("--reason", help="A short code: resolved, contained, false-alarm...")],
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Close an incident (a notification still owed stays owed: siloguard check keeps failing)."""
    with _Opened(run, db) as opened:
        incident = opened.register.close(incident_id, actor=_actor(), reason=reason)
        _show(incident, opened.register.clock())
        owed = [d for d in incident.dues if d.done_at is None]
        if owed:
            typer.echo(f"note: {len(owed)} notification(s) still owed: record them with siloguard incident notify {incident.id}", err=True)


@incident_app.command("list")
@one_line_errors
def list_incidents(
    open_only: Annotated[bool, typer.Option("--open", help="Only incidents not closed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    run: RunOpt = None,
    db: DbOpt = None,
) -> None:
    """Incidents with their clocks (soonest awareness first)."""
    from rich.console import Console
    from rich.table import Table

    with _Opened(run, db) as opened:
        now = opened.register.clock()
        found = opened.register.list(open_only=open_only)
    if as_json:
        typer.echo(json.dumps({"now": now.isoformat(), "incidents": [i.to_json(now) for i in found]}, indent=2))
        return
    if not found:
        typer.echo("no incidents" + (" open" if open_only else "") + " in the register")
        return
    table = Table(title="Incident register", title_justify="left")
    for column in ("id", "kind", "risk", "aware (UTC)", "stores", "people", "next notification", "state"):
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for incident in found:
        owed = [d for d in incident.dues if d.done_at is None]
        nxt = min(owed, key=lambda d: d.due_at) if owed else None
        text = f"{nxt.clock.party} by {nxt.due_at:%Y-%m-%d %H:%M}" if nxt else ("none due" if not incident.dues else "all made")
        state = "closed" if not incident.open else "open"
        if any(d.state(now) == "overdue" for d in incident.dues):
            state += ", [bold red]OVERDUE[/]"
        table.add_row(incident.id, incident.kind, incident.risk, f"{incident.aware_at:%Y-%m-%d %H:%M}", ", ".join(incident.stores),
                      str(incident.subjects), text, state)
    Console(width=max(120, Console().width)).print(table)
