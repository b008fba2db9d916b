"""``siloguard store ...`` and ``siloguard consent ...``: what a store's operator runs.

The ``store`` group is shared: enrolment and the node are registered by
``siloguard.deploy.cli``, data-subject request sync by ``siloguard.dsr.cli``; segments and
campaign lists live here. Every command works on a prepared run directory (``--out``, as
``siloguard train`` / ``demo`` made it): its database and the stores' keys are found there
unless ``SILOGUARD_DATABASE__URL`` / ``SILOGUARD_KEYS__ROOT`` say otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from siloguard.config import Settings
from siloguard.runs import run_settings  # re-exported: part of this module's API
from siloguard.storage.cli import command_group, one_line_errors

__all__ = ["OutOpt", "consent_app", "run_settings", "store_app"]

store_app = command_group(
    "store",
    "Run and look after one partner store: enrol it, start its node, segments and campaign lists, sync data-subject requests.",
)
consent_app = command_group(
    "consent", "The consent registry: import the consents stores collected, see who may be used for what."
)

OutOpt = Annotated[Path, typer.Option("--out", help="The run's work directory (as given to siloguard train/demo).")]


# ---- consent ---------------------------------------------------------------------------


@consent_app.command("import")
@one_line_errors
def consent_import(
    file: Annotated[Path, typer.Argument(help="CSV: customer_id,store,purpose,event,source,notice_version,at")],
    out: OutOpt = Path("runs/demo"),
) -> None:
    """Record consent events from a file in the stores' registry (the whole file is checked first)."""
    from siloguard.clients.gating import known_stores, store_keys
    from siloguard.policies.consent import ConsentRegistry
    from siloguard.policies.consent_io import import_consent, read_consent_file

    settings = run_settings(out)
    stores = known_stores(settings)
    frame = read_consent_file(file, stores)
    registry = ConsentRegistry(settings.database.url)
    try:
        result = import_consent(registry, frame, {s: store_keys(settings, s) for s in stores})
    finally:
        registry.close()
    typer.echo(f"recorded {sum(result.events.values()):,} consent events in {len(result.events)} store(s)")
    if result.suppressed:
        typer.echo(f"skipped {result.suppressed:,} event(s) of customers the stores erased (their suppression lists)")


@consent_app.command("status")
@one_line_errors
def consent_status(
    purpose: Annotated[str, typer.Option("--purpose", help="A fideslang data use.")] = "personalize.profiling",
    out: OutOpt = Path("runs/demo"),
) -> None:
    """Customers per store with a live consent for a purpose now (counts only)."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.gating import known_stores, silo_path, store_consent
    from siloguard.data.loader import load_clean
    from siloguard.errors import ConfigError
    from siloguard.policies.taxonomy import load_taxonomy

    if not load_taxonomy().is_use(purpose):
        raise ConfigError(f"unknown purpose {purpose!r}: use a fideslang data use (policies/taxonomy.yaml)")
    settings = run_settings(out)
    now = datetime.now(UTC)
    table = Table(title=f"Live consent for {purpose}", title_justify="left")
    for column in ("store", "customers", "consenting", "share"):
        table.add_column(column, justify="left" if column == "store" else "right")
    for store in known_stores(settings):
        frame, _ = load_clean(silo_path(settings, store))
        ids = {str(c) for c in frame["customer_id"].unique()}
        n = len(store_consent(settings, store).subjects_with_basis(purpose, ids, now))
        table.add_row(store, f"{len(ids):,}", f"{n:,}", f"{n / max(len(ids), 1):.0%}")
    Console().print(table)


# ---- segments and campaigns ------------------------------------------------------------

StoreArg = Annotated[str, typer.Argument(help="The store (see run.json, e.g. uk-1, germany).")]
StaffOpt = Annotated[str, typer.Option("--staff", help="Your staff name, recorded as staff:<name> in the audit log.")]


def _check_store(settings: Settings, store: str) -> None:
    from siloguard.clients.gating import known_stores
    from siloguard.errors import ConfigError

    stores = known_stores(settings)
    if store not in stores:
        raise ConfigError(f"unknown store {store!r}: this run's stores are {', '.join(stores)}")


@store_app.command("segments")
@one_line_errors
def segments(
    store: StoreArg,
    out: OutOpt = Path("runs/demo"),
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write every customer's scores and segment (pseudonymous ids).")] = None,
    staff: StaffOpt = "operator",
) -> None:
    """RFM segments of a store's customers (analytics.reporting, through the gate)."""
    from rich.console import Console
    from rich.table import Table

    from siloguard._files import write_atomic
    from siloguard.clients.campaign import store_segments
    from siloguard.recommender.segments import segment_counts

    settings = run_settings(out)
    _check_store(settings, store)
    table_data = store_segments(settings, store, staff=staff)
    counts = segment_counts(table_data)
    table = Table(title=f"RFM segments of {store} ({len(table_data):,} customers)", title_justify="left")
    for column in ("segment", "customers", "median spend", "median invoices", "median days since last"):
        table.add_column(column, justify="left" if column == "segment" else "right")
    for name, n in counts.items():
        part = table_data[table_data["segment"] == name]
        med = (lambda c: f"{part[c].median():,.0f}" if n else "-")  # noqa: E731
        table.add_row(name, f"{n:,}", med("monetary"), med("frequency"), med("recency_days"))
    Console().print(table)
    if csv is not None:
        write_atomic(csv, table_data.to_csv(index=False).encode(), mode=0o600)
        typer.echo(f"wrote {len(table_data):,} rows to {csv}")


@store_app.command("campaign")
@one_line_errors
def campaign(
    store: StoreArg,
    csv: Annotated[Path, typer.Option("--csv", help="Where to write the target list (CSV, mode 0600).")],
    segment: Annotated[Optional[str], typer.Option("--segment", help="Target a segment: champions, loyal, new, promising, needs_attention, at_risk, hibernating.")] = None,
    item: Annotated[Optional[str], typer.Option("--item", help="Target a product (stock code), ranked by the federated model.")] = None,
    top: Annotated[int, typer.Option("--top", help="How many customers.")] = 100,
    profiles: Annotated[Optional[Path], typer.Option("--profiles", help="The store's customer profiles CSV: adds the contact columns the policy lets you export.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="model.pt to rank with [default: the run's model].")] = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """A campaign target list: only customers with a live marketing consent, exported through the gate."""
    from siloguard._files import write_atomic
    from siloguard.clients.campaign import campaign_list

    settings = run_settings(out)
    _check_store(settings, store)
    result = campaign_list(
        settings, store, segment=segment, item=item, top=top, model_file=model, profiles=profiles, staff=staff
    )
    write_atomic(csv, result.frame.to_csv(index=False).encode(), mode=0o600)
    typer.echo(
        f"wrote {len(result.frame):,} customers to {csv} (from {result.consented:,} with a live marketing consent; "
        f"columns: {', '.join(result.frame.columns)}; gate decisions {', '.join(result.decisions)})"
    )
