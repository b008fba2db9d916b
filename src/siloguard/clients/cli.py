"""``siloguard store ...`` and ``siloguard consent ...``: what a store's operator runs.

The ``store`` group is shared: enrolment and the node are registered by
``siloguard.deploy.cli``, erasure sync by ``siloguard.dsr.cli``, recommendations, profiles,
lifetime value, campaigns and the staff API by ``siloguard.clients.marketing_cli``; the site
(``store init``, ``store publish``) and segments live here. Every command works on the store's site (``--site
DIR``, made by ``siloguard store init``): its file, database and keys are found there unless
``SILOGUARD_DATABASE__URL`` / ``SILOGUARD_KEYS__ROOT`` say otherwise. On one machine,
``--out RUN`` with the store's name finds the site ``RUN/stores/<store>`` that ``siloguard
demo`` / ``train`` laid out (and a run prepared in one directory by an older siloguard).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional


import typer

from siloguard.config import Settings
from siloguard.runs import run_settings  # re-exported: part of this module's API
from siloguard.storage.cli import command_group, one_line_errors

__all__ = ["OutOpt", "SiteOpt", "StaffOpt", "StoreArg", "consent_app", "env_note", "run_settings", "store_app", "store_settings"]

store_app = command_group(
    "store",
    "Run and look after one partner store: enrol it, start its node, segments and campaign lists, sync data-subject requests.",
)
consent_app = command_group(
    "consent", "The consent registry: import the consents stores collected, see who may be used for what."
)

OutOpt = Annotated[Path, typer.Option("--out", help="A run laid out on one machine (as given to siloguard train/demo): its stores/<store> sites.")]
SiteOpt = Annotated[Optional[Path], typer.Option("--site", help="The store's site directory (siloguard store init).")]


def _sites(out: Path) -> dict[str, Path]:
    from siloguard.clients.site import sites_under

    return sites_under(out)


def _targets(site: Path | None, out: Path) -> list[tuple[str, Settings]]:
    """(store, settings) of every store a command works on: the --site, or each site of a run."""
    if site is not None:
        return [store_settings(None, site, out)]
    if _sites(out):
        return [store_settings(name, None, out) for name in _sites(out)]
    from siloguard.clients.gating import known_stores

    settings = run_settings(out)
    return [(s, settings) for s in known_stores(settings)]


def env_note() -> None:
    """Say when the environment overrides a store site's own database or keys (it wins, by design)."""
    import os

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT"):
        if name in os.environ:
            typer.echo(f"note: {name} is set: it overrides the store site's own (unset it to use the site's)", err=True)


def store_settings(store: str | None, site: Path | None, out: Path) -> tuple[str, Settings]:
    """The store's name and settings: its ``--site``, or its site under a one-machine run ``--out``."""
    from siloguard.clients.site import StoreSite
    from siloguard.errors import ConfigError

    if site is not None or _sites(out):
        env_note()
    if site is not None:
        opened = StoreSite.open(site)
        if store is not None and store != opened.name:
            raise ConfigError(f"--site {site} is store {opened.name!r}'s site, not {store!r}'s")
        return opened.name, opened.settings
    sites = _sites(out)
    if sites:
        if store is None or store not in sites:
            raise ConfigError(f"name the store: {out} holds the sites of {', '.join(sites)} (or pass --site DIR)")
        return store, StoreSite.open(sites[store]).settings
    if store is None:
        raise ConfigError("pass --site DIR (the store's site from 'siloguard store init')")
    if not Path(out).is_dir():
        raise ConfigError(f"no run at {out}: pass --site DIR (the store's site), or --out with the run siloguard demo/train made")
    settings = run_settings(out)
    _check_store(settings, store)
    return store, settings


# ---- consent ---------------------------------------------------------------------------


@consent_app.command("import")
@one_line_errors
def consent_import(
    file: Annotated[Path, typer.Argument(help="CSV: customer_id,store,purpose,event,source,notice_version,at")],
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
) -> None:
    """Record consent events from a file in the store's registry (the whole file is checked first).

    With --site, the events of that store (and those with an empty store column) go into its
    site; with --out RUN, each store's events go into its own site under the run.
    """
    from siloguard.policies.consent import ConsentRegistry
    from siloguard.policies.consent_io import import_consent, read_consent_file

    targets = _targets(site, out)
    frame = read_consent_file(file, [name for name, _ in targets])
    from siloguard.clients.gating import store_keys

    total: dict[str, int] = {}
    suppressed = 0
    for name, settings in targets:
        registry = ConsentRegistry(settings.database.url)
        try:
            result = import_consent(registry, frame, {name: store_keys(settings, name)})
        finally:
            registry.close()
        total.update(result.events)
        suppressed += result.suppressed
    typer.echo(f"recorded {sum(total.values()):,} consent events in {len(total)} store(s)")
    if suppressed:
        typer.echo(f"skipped {suppressed:,} event(s) of customers the stores erased (their suppression lists)")


@consent_app.command("status")
@one_line_errors
def consent_status(
    purpose: Annotated[str, typer.Option("--purpose", help="A fideslang data use.")] = "personalize.profiling",
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
) -> None:
    """Customers per store with a live consent for a purpose now (counts only)."""
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.gating import silo_path, store_consent
    from siloguard.data.loader import load_clean
    from siloguard.errors import ConfigError
    from siloguard.policies.taxonomy import load_taxonomy

    if not load_taxonomy().is_use(purpose):
        raise ConfigError(f"unknown purpose {purpose!r}: use a fideslang data use (policies/taxonomy.yaml)")
    targets = _targets(site, out)
    now = datetime.now(UTC)
    table = Table(title=f"Live consent for {purpose}", title_justify="left")
    for column in ("store", "customers", "consenting", "share"):
        table.add_column(column, justify="left" if column == "store" else "right")
    for store, settings in targets:
        frame, _ = load_clean(silo_path(settings, store))
        ids = {str(c) for c in frame["customer_id"].unique()}
        n = len(store_consent(settings, store).subjects_with_basis(purpose, ids, now))
        table.add_row(store, f"{len(ids):,}", f"{n:,}", f"{n / max(len(ids), 1):.0%}")
    Console().print(table)


@consent_app.command("rebuild-state")
@one_line_errors
def consent_rebuild_state(site: SiteOpt = None, out: OutOpt = Path("runs/demo")) -> None:
    """Rebuild each store's current consent state from its event log (the log decides), after
    `siloguard check` found them apart (rule consent-state-rebuilds)."""
    from siloguard.policies.consent import ConsentRegistry

    for name, settings in _targets(site, out):
        registry = ConsentRegistry(settings.database.url)
        try:
            before = registry.state_differences()
            rows = registry.rebuild_state()
        finally:
            registry.close()
        typer.echo(f"{name}: consent state rebuilt from {before['events']:,} events: {rows:,} rows "
                   f"({before['missing']:,} missing or wrong and {before['extra']:,} extra before)")


# ---- the site ---------------------------------------------------------------------------


@store_app.command("init")
@one_line_errors
def store_init(
    store: Annotated[str, typer.Argument(help="The store's name: lowercase letters, digits and '-', e.g. germany, store-31782.")],
    site: Annotated[Path, typer.Option("--site", help="Directory of the new site (created; mode 0700).")],
    data: Annotated[Path, typer.Option("--data", help="The store's transaction file (Online Retail CSV or CSV.gz).")],
    country: Annotated[Optional[str], typer.Option("--country", help="The country the store operates in (English name, e.g. Germany); without it, judged from the rows' Country column.")] = None,
    jurisdiction: Annotated[str, typer.Option("--jurisdiction", help="The law the store operates under: gdpr or ccpa.")] = "gdpr",
    contact: Annotated[Optional[str], typer.Option("--contact", help="Where the store's customers reach its privacy desk (e.g. privacy@store.example).")] = None,
    consent: Annotated[Optional[Path], typer.Option("--consent", help="Consent records CSV the store collected (imported into the site).")] = None,
    database: Annotated[Optional[str], typer.Option("--database", help="The store's own database URL. \\[default: DIR/siloguard.db]")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Use --data where it is instead of copying it into the site (erasures then rewrite it there).")] = False,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="'data': a historical extract; its rows are aged on its own clock by `siloguard check` (docs/COMPLIANCE.md).")] = None,
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code of the prices in --data, shown on lists and reports.")] = "GBP",
) -> None:
    """Create the store's site: its data, database, keys, consent and the publication for the coordinator."""
    from siloguard.clients.site import StoreSite
    from siloguard.errors import ConfigError

    if as_of not in (None, "data"):
        raise ConfigError("--as-of takes 'data' (age rows on the data's own clock); leave it out to age them against today")
    opened = StoreSite.init(site, store, data, country=country, jurisdiction=jurisdiction, contact=contact,
                            database=database, consent=consent, in_place=in_place, compliance_as_of=as_of,
                            currency=currency.upper())
    c = opened.cleaning
    if c is not None:
        typer.echo(
            f"{data.name}: kept {c.rows_out:,} purchases; dropped {c.guest_rows:,} guest, {c.cancellation_rows:,} cancelled, "
            f"{c.non_positive_quantity_rows + c.non_positive_price_rows:,} non-positive, "
            f"{c.missing_quantity_rows + c.missing_price_rows:,} without quantity or price"
        )
    pub = opened.publication()
    typer.echo(
        f"store {opened.name}: site {opened.directory} ({pub.counts.get('rows', 0):,} purchases of "
        f"{pub.counts.get('customers', 0):,} customers, {pub.counts.get('consented', 0):,} with a live training consent; "
        f"{len(pub.products):,} products, {pub.first_day} .. {pub.last_day})"
    )
    typer.echo(f"send {opened.directory / 'publication.json'} to the coordinator (products, dates and counts; no customer data)")


@store_app.command("publish")
@one_line_errors
def store_publish(site: Annotated[Path, typer.Option("--site", help="The store's site directory.")]) -> None:
    """Write the store's publication again (after new data): products, dates and counts for the coordinator."""
    from siloguard.clients.site import StoreSite

    path = StoreSite.open(site).publish()
    typer.echo(f"wrote {path}; send it to the coordinator")


# ---- segments and campaigns ------------------------------------------------------------

StoreArg = Annotated[Optional[str], typer.Argument(help="The store (with --out RUN; implied by --site).")]
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
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write every customer's scores and segment (pseudonymous ids).")] = None,
    staff: StaffOpt = "operator",
) -> None:
    """RFM segments of a store's customers (analytics.reporting, through the gate)."""
    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.campaign import REPORTING, operator, store_segments
    from siloguard.clients.marketing import export_file
    from siloguard.recommender.segments import segment_counts

    store, settings = store_settings(store, site, out)
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
        export_file(settings, store, operator(store, staff), csv, table_data.to_csv(index=False).encode(), kind="segments",
                    purpose=REPORTING, decision=table_data.attrs.get("decision", "unknown"), rows=len(table_data),
                    customers=len(table_data))
        typer.echo(f"wrote {len(table_data):,} rows to {csv}")
