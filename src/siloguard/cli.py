"""``siloguard`` command line.

Every command builds one :class:`~siloguard.config.Settings` from its options
(over ``SILOGUARD_*`` environment variables and defaults) and passes it down.
Errors a user can fix print one line and exit with the error's code.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from siloguard.config import Settings
from siloguard.errors import SiloguardError

EXIT_CODES = """Exit codes: 0 done; 1 a check failed (siloguard check); 2 invalid settings or options; 3 unusable
data; 4 a federated run failed; 5 refused by the access policy or the gate; 6 audit log refused an
input; 7 audit verification failed; 8 database unreachable or not migrated; 9 privacy budget; 10 a
compliance rule refused a run."""

app = typer.Typer(
    name="siloguard",
    help="Privacy-first federated learning and compliance for retail precision marketing.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from siloguard import __version__

        typer.echo(f"siloguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Privacy-first federated learning and compliance for retail precision marketing."""

def _mount_subcommands() -> None:
    from siloguard.audit.cli import audit_app
    from siloguard.clients.cli import consent_app, store_app
    from siloguard.compliance.cli import check_app, retention_app
    from siloguard.storage.cli import db_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(db_app, name="db")
    app.add_typer(store_app, name="store")
    app.add_typer(consent_app, name="consent")
    app.add_typer(check_app, name="check")
    app.add_typer(retention_app, name="retention")
    from siloguard.compliance.incident_cli import incident_app

    app.add_typer(incident_app, name="incident")

    # siloguard serve, siloguard keys ..., siloguard store sync (privacy API and DSRs)
    import siloguard.dsr.cli  # noqa: F401  registers `store sync` on store_app
    import siloguard.clients.marketing_cli  # noqa: F401  registers recommend, profiles, clv, campaign on store_app
    from siloguard.api.cli import keys_app, outbox_app, serve
    from siloguard.dsr.cli import answer_app

    app.add_typer(answer_app, name="answer")
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
    app.add_typer(outbox_app, name="outbox")

    # siloguard pki init, coordinator start, store enroll|start, federate, model ...
    from siloguard.deploy.cli import coordinator_app, federate, pki_app
    from siloguard.federation.cli import model_app

    app.add_typer(pki_app, name="pki")
    app.add_typer(coordinator_app, name="coordinator")
    app.command("federate")(federate)
    from siloguard.clients.marketing_cli import model_compare

    if not any(c.name == "compare" for c in model_app.registered_commands):
        model_app.command("compare")(model_compare)  # runs on a store's site: the store's customers, its gate
    app.add_typer(model_app, name="model")


_mount_subcommands()
console = Console()
err_console = Console(stderr=True)

_METRICS = ("ndcg@10", "hr@10", "recall@20")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _results_table(title: str, per_store: dict[str, dict[str, float]], overall: dict[str, float]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("store")
    table.add_column("test customers", justify="right")
    for m in _METRICS:
        table.add_column(m.upper(), justify="right")
    table.add_column("NDCG@10 new items", justify="right")
    for store, m in sorted(per_store.items()):
        table.add_row(store, _fmt(int(m.get("users", 0))), *(_fmt(m.get(k)) for k in _METRICS), _fmt(m.get("new.ndcg@10")))
    table.add_section()
    table.add_row(
        "overall (weighted)",
        _fmt(int(overall.get("users", 0))),
        *(_fmt(overall.get(k)) for k in _METRICS),
        _fmt(overall.get("new.ndcg@10")),
        style="bold",
    )
    return table


_PER_STORE_ROWS = 20  # more stores than this: the final table is a summary unless --per-store


def _spread(values: list[float]) -> str:
    """min/median/max of store figures, or - when there are none."""
    import statistics

    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return "-"
    return f"{min(clean):.3f}/{statistics.median(clean):.3f}/{max(clean):.3f}"


def round_line(report: Any, rounds: int) -> str:
    """One line per round at any number of stores: the overall figures and a summary of the stores.

    Stores trained (their update went into the model), skipped (at their privacy budget),
    dropped (no reply) and rejected (refused by the aggregator), min/median/max of the stores'
    NDCG@10 and the range of privacy spent; the per-store figures go to rounds.json.
    """
    overall = report.overall
    ndcg = [m.get("ndcg@10") for m in report.evaluate.values()]
    spent = [m["epsilon"] for m in report.train.values() if "epsilon" in m]
    parts = [
        f"round {report.server_round}/{rounds}: NDCG@10 {_fmt(overall.get('ndcg@10'))} (new items {_fmt(overall.get('new.ndcg@10'))})",
        f"stores trained {len(report.participants)}, skipped {len(report.skipped)}, dropped {len(report.dropped)}"
        + (f", rejected {len(report.rejected)}" if report.rejected else "")
        + (f", failed {report.failures}" if report.failures else ""),
        f"store NDCG@10 min/med/max {_spread(ndcg)}",
    ]
    if spent:  # spent so far of each store's cap (the planned budget ends at it)
        caps = sorted({m["epsilon-cap"] for m in report.train.values() if "epsilon-cap" in m})
        parts.append(f"epsilon spent {min(spent):.2f}-{max(spent):.2f}" + (f" of {caps[-1]:g}" if caps else ""))
    return "  ".join(parts)


def write_rounds(path: Path, reports: dict[int, Any]) -> Path:
    """Every round's per-store figures (training, evaluation, budget, skipped, dropped), as JSON."""
    import json

    def clean(metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}

    rows = [{
        "round": r.server_round,
        "overall": clean(r.overall),
        "trained": r.participants,
        "skipped": sorted(r.skipped),
        "dropped": sorted(r.dropped),
        "rejected": dict(sorted(r.rejected.items())),
        "failures": r.failures,
        "per_store": {store: {"train": clean(r.train.get(store, {})), "evaluate": clean(r.evaluate.get(store, {}))}
                      for store in sorted(set(r.train) | set(r.evaluate))},
    } for _, r in sorted(reports.items())]
    path.write_text(json.dumps({"rounds": rows}, indent=1) + "\n")
    return path


def _summary_table(title: str, per_store: dict[str, dict[str, float]], overall: dict[str, float]) -> Table:
    """The final figures for many stores: overall, and min/median/max over the stores."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("test customers", justify="right")
    for m in _METRICS:
        table.add_column(m.upper(), justify="right")
    table.add_column("NDCG@10 new items", justify="right")
    table.add_row("overall (weighted)", _fmt(int(overall.get("users", 0))), *(_fmt(overall.get(k)) for k in _METRICS),
                  _fmt(overall.get("new.ndcg@10")), style="bold")
    import statistics

    for name, pick in (("store min", min), ("store median", statistics.median), ("store max", max)):
        def cell(key: str) -> str:
            values = [m.get(key) for m in per_store.values()]
            values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            return _fmt(float(pick(values))) if values else "-"

        users = [m.get("users", 0) for m in per_store.values()]
        table.add_row(name, _fmt(int(pick(users))) if users else "-", *(cell(k) for k in _METRICS), cell("new.ndcg@10"))
    return table


def _run(out: Path, settings: Settings, *, verbose: bool, per_store: bool = False) -> None:
    from siloguard.federation.runner import run_federation
    from siloguard.runs import run_settings
    from siloguard.sites import lay_out, layout

    started = time.perf_counter()
    coordinator = run_settings(layout(out).coordinator, settings)
    with console.status("Laying out the stores' sites and the coordinator's run..."):
        laid = lay_out(out, settings, coordinator)
    prepared = laid.prepared
    c = laid.cleaning
    if c is not None:
        console.print(
            f"[bold]Data[/] {laid.source.name}: {c.rows_out:,} purchases of {c.customers:,} customers, "
            f"cut into {len(prepared.stores)} store sites under {out / 'stores'} "
            f"(dropped {c.guest_rows:,} guest, {c.cancellation_rows:,} cancelled, "
            f"{c.non_positive_quantity_rows + c.non_positive_price_rows:,} non-positive, "
            f"{c.missing_quantity_rows + c.missing_price_rows:,} without quantity or price)"
        )
    else:
        console.print(f"[bold]Sites[/] {len(prepared.stores)} store sites under {out / 'stores'} (kept as they are)")
    console.print(
        f"[bold]Coordinator[/] {coordinator.work_dir}: {prepared.items:,} products in the catalogue the stores published"
    )
    console.print(
        f"[bold]Split[/] train before {prepared.split_date.date()}, test {prepared.split_date.date()} .. "
        f"{(prepared.end_date - __import__('pandas').Timedelta(days=1)).date()}"
    )
    console.print(
        "[bold]Stores[/] " + ", ".join(f"{name} ({n})" for name, n in sorted(prepared.customers.items()))
    )
    consented, customers = sum(prepared.consented.values()), sum(prepared.customers.values())
    console.print(
        f"[bold]Consent[/] {consented:,} of {customers:,} customers may be used for personalize.profiling now; "
        "the gate checks again before every round"
    )
    without = sorted(name for name, n in prepared.consented.items() if n == 0)
    if without:  # refused before the simulation engine starts (run_federation checks it too)
        from siloguard.errors import ConfigError

        raise ConfigError(
            f"no customer of store(s) {', '.join(without)} has a live consent for personalize.profiling, so the "
            "gate lets nothing train: import the consents your stores collected (siloguard train --consent FILE, "
            "or siloguard consent import FILE --site SITE)"
        )
    rounds = settings.federation.rounds
    progress = Progress(
        TextColumn("[bold]Federated training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    last: dict[str, Any] = {}

    def on_round(report: Any) -> None:
        progress.console.print(round_line(report, rounds), soft_wrap=False)
        progress.update(task, advance=1, status=f"NDCG@10 {_fmt(report.overall.get('ndcg@10'))}")
        last["report"] = report

    with progress:
        task = progress.add_task("train", total=rounds, status="starting Flower simulation engine")
        outcome = run_federation(coordinator, prepared, on_round, verbose=verbose)
    report = last.get("report") or outcome.reports[max(outcome.reports)]
    rounds_file = write_rounds(Path(coordinator.work_dir) / "rounds.json", outcome.reports)
    if per_store or len(report.evaluate) <= _PER_STORE_ROWS:
        console.print(_results_table("Final model, full ranking on the test period", report.evaluate, report.overall))
    else:
        console.print(_summary_table("Final model, full ranking on the test period", report.evaluate, report.overall))
        console.print(f"[dim]{len(report.evaluate)} stores: one row per store with --per-store; every round per store in {rounds_file}[/]")
    _print_privacy(coordinator, outcome.model_dir)
    from siloguard.sites import distribute_model

    distribute_model(out, Path(outcome.model_dir))  # what the coordinator sends its stores
    console.print(
        f"Model (shared parameters only) and manifest: {outcome.model_dir}  "
        f"[dim]({time.perf_counter() - started:.0f} s)[/]"
    )


def _print_privacy(settings: Settings, model_dir: str | None) -> None:
    import json

    if model_dir is None:
        return
    summary = json.loads((Path(model_dir) / "manifest.json").read_text())["privacy"]
    if not summary.get("enabled"):
        console.print("[bold yellow]Privacy:[/] trained WITHOUT differential privacy (--no-dp).")
        return
    table = Table(title="Privacy spent per store (customer-level DP)", title_justify="left")
    for col in ("store", "epsilon", "delta", "steps", "noise per round"):
        table.add_column(col, justify="left" if col == "store" else "right")
    for store, p in sorted(summary["per_store"].items()):
        noise = " ".join(f"{v:.3g}" for _r, v in sorted(p.get("noise_per_round", {}).items(), key=lambda kv: int(kv[0])))
        table.add_row(store, f"{p['epsilon']:.2f}", f"{p['delta']:.1e}", str(p["steps"]), noise)
    console.print(table)
    fixed = summary["noise_multiplier"]
    noise = (
        f"noise multiplier {fixed} (fixed)" if fixed is not None
        else f"noise planned per store and round to spend epsilon {summary.get('epsilon_target')} over the run"
    )
    console.print(
        f"[dim]unit: {summary['unit']}; {summary['accountant'].upper()} accountant; {summary['sampling']}; "
        f"{noise}, clipping {summary['max_grad_norm']}; cap {summary['epsilon_cap']} per store.[/]"
    )


DataOpt = Annotated[
    Optional[Path],
    typer.Option("--data", help="Online Retail CSV or CSV.gz (UCI columns; ISO or M/D/YYYY dates)."),
]
SplitOpt = Annotated[
    Optional[str],
    typer.Option("--split-date", help="First test day, YYYY-MM-DD. Default: the last --test-weeks of the file."),
]
TestWeeksOpt = Annotated[Optional[int], typer.Option("--test-weeks", help="Test period length when no --split-date. \\[default: 4]")]
StoresOpt = Annotated[Optional[int], typer.Option("--stores", help="Stores the UK customers are split into. \\[default: 4]")]
RoundsOpt = Annotated[Optional[int], typer.Option("--rounds", help="Federated rounds. \\[default: 7]")]
EpochsOpt = Annotated[Optional[int], typer.Option("--local-epochs", help="Passes over a store's examples per round. \\[default: 2]")]
DimOpt = Annotated[Optional[int], typer.Option("--dim", help="Item/customer embedding size. \\[default: 32]")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for initialisation and sampling. \\[default: 0]")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's logs.")]
PerStoreOpt = Annotated[bool, typer.Option(
    "--per-store", help="The final table with one row per store (by default above 20 stores: min/median/max). Every round per store is in coordinator/rounds.json either way.")]
DpOpt = Annotated[
    Optional[bool],
    typer.Option("--dp/--no-dp", help="Customer-level DP-SGD in every store. \\[default: on]"),
]
CapOpt = Annotated[
    Optional[float],
    typer.Option("--epsilon-cap", help="Privacy budget per store (customer-level epsilon). \\[default: 8]"),
]
NoiseOpt = Annotated[
    Optional[float],
    typer.Option(
        "--noise-multiplier",
        help="Fixed DP-SGD noise / clipping norm for every round, instead of planning it from --epsilon. "
        "\\[default: planned]",
    ),
]
EpsilonOpt = Annotated[
    Optional[float],
    typer.Option(
        "--epsilon",
        help="Planned privacy budget per store (customer-level epsilon) for the whole run: each round's noise is "
        "chosen so the planned rounds spend exactly this. \\[default: the cap]",
    ),
]


def _settings(
    *,
    out: Path,
    data: Path | None,
    split_date: str | None,
    consent: Path | None = None,
    test_weeks: int | None,
    stores: int | None,
    rounds: int | None,
    local_epochs: int | None,
    dim: int | None,
    seed: int | None,
    dp: bool | None = None,
    epsilon_cap: float | None = None,
    noise_multiplier: float | None = None,
    epsilon: float | None = None,
) -> Settings:
    split: date | None = None
    if split_date is not None:
        try:
            split = date.fromisoformat(split_date)
        except ValueError:
            from siloguard.errors import ConfigError

            raise ConfigError(f"--split-date {split_date!r} is not a date: use YYYY-MM-DD, e.g. 2011-10-03") from None
    # Federation-wide settings; each site (stores, coordinator) adds its own database and
    # keys inside its directory unless the environment names them (siloguard.sites).
    settings = Settings.build().with_overrides(
        work_dir=out,  # type: ignore[arg-type]
        data={"path": data, "consent": consent, "split_date": split, "test_weeks": test_weeks, "uk_stores": stores},
        federation={"rounds": rounds},
        model={"local_epochs": local_epochs, "dim": dim, "seed": seed},
        privacy={"enabled": dp, "epsilon_cap": epsilon_cap, "noise_multiplier": noise_multiplier, "epsilon": epsilon},
    )
    # Every setting is validated above, before the data is touched.
    if data is not None and not data.is_file():
        from siloguard.errors import DataError

        raise DataError(f"--data {data}: no such file; pass an Online Retail CSV or CSV.gz")
    if consent is not None and not consent.is_file():
        from siloguard.errors import DataError

        raise DataError(f"--consent {consent}: no such file; pass a consent records CSV (see siloguard consent import --help)")
    return settings


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run directory: stores/<store>/ sites, coordinator/ (catalogue, model); privacy/ once `serve --run` uses it.")] = Path("runs/demo"),
    rounds: RoundsOpt = None,
    dp: DpOpt = None,
    epsilon: EpsilonOpt = None,
    verbose: VerboseOpt = False,
    per_store: PerStoreOpt = False,
) -> None:
    """Federated training on the embedded Online Retail sample, with defaults (DP on)."""
    settings = _settings(
        out=out, data=None, split_date=None, test_weeks=None, stores=None, rounds=rounds,
        local_epochs=None, dim=None, seed=None, dp=dp, epsilon=epsilon,
    )
    _run(out, settings, verbose=verbose, per_store=per_store)


@app.command()
def train(
    data: DataOpt = None,
    consent: Annotated[
        Optional[Path],
        typer.Option("--consent", help="Consent records CSV to import (columns: customer_id,store,purpose,event,source,notice_version,at).", show_default=False),
    ] = None,
    split_date: SplitOpt = None,
    test_weeks: TestWeeksOpt = None,
    stores: StoresOpt = None,
    rounds: RoundsOpt = None,
    local_epochs: EpochsOpt = None,
    dim: DimOpt = None,
    seed: SeedOpt = None,
    dp: DpOpt = None,
    epsilon: EpsilonOpt = None,
    epsilon_cap: CapOpt = None,
    noise_multiplier: NoiseOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory: stores/<store>/ sites, coordinator/ (catalogue, model + manifest); privacy/ once `serve --run` uses it.")] = Path("runs/train"),
    verbose: VerboseOpt = False,
    per_store: PerStoreOpt = False,
) -> None:
    """Federated training on your own Online Retail file; saves the global model with a manifest."""
    if data is None:
        raise typer.BadParameter("pass --data PATH (or run 'siloguard demo' for the embedded sample)", param_hint="--data")
    settings = _settings(
        out=out, data=data, consent=consent, split_date=split_date, test_weeks=test_weeks, stores=stores,
        rounds=rounds, local_epochs=local_epochs, dim=dim, seed=seed, dp=dp,
        epsilon_cap=epsilon_cap, noise_multiplier=noise_multiplier, epsilon=epsilon,
    )
    _run(out, settings, verbose=verbose, per_store=per_store)


def main() -> None:
    """Console entry point: user-fixable errors print one line, never a traceback."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        app(standalone_mode=True)
    except SiloguardError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
