"""``siloguard store recommend|profiles|clv|campaign|serve|staff-key``: a store's marketing.

Registered on the ``store`` command group (``siloguard.cli`` imports this module). Every
command works on the store's site (``--site DIR``) or a store of a one-machine run
(``--out RUN STORE``), reads through the store's gate as ``staff:<--staff>``, and writes any
file with :func:`siloguard.clients.marketing.export_file` (audited first, mode 0600).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from siloguard.clients.cli import OutOpt, SiteOpt, StaffOpt, StoreArg, store_app, store_settings
from siloguard.storage.cli import command_group, one_line_errors

__all__ = ["campaign_app"]

campaign_app = command_group(
    "campaign", "Campaign lists with a held-out control group, and what each campaign changed."
)
store_app.add_typer(campaign_app, name="campaign")

CsvOpt = Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows as CSV (mode 0600, audited).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON (mode 0600, audited).")]
AsOfOpt = Annotated[Optional[str], typer.Option("--as-of", help="Use purchases before this day (YYYY-MM-DD) [default: all].")]


def _money(value: float, currency: str) -> str:
    return f"{value:,.2f} {currency}"


# ---- recommendations -------------------------------------------------------------------------


@store_app.command("recommend")
@one_line_errors
def recommend(
    customer: Annotated[str, typer.Option("--customer", help="The customer's id in the store's data.")],
    k: Annotated[int, typer.Option("--k", help="How many products.")] = 10,
    model: Annotated[Optional[Path], typer.Option("--model", help="model.pt to rank with [default: the site's model/].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """A customer's top products over the whole catalogue: description, score and why (personalize.profiling)."""
    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.recommend import Recommender, serving_threads

    serving_threads()
    store, settings = store_settings(store, site, out)
    answer = Recommender(settings, store, model_file=model, staff_name=staff).recommend(customer, k=k, staff_name=staff)
    if as_json:
        typer.echo(json.dumps(answer.to_json(), indent=1))
        return
    table = Table(
        title=f"Top {len(answer.items)} for the customer in {store} (as of {answer.as_of}, model {answer.model_version})",
        title_justify="left", caption=f"score: estimated chance of buying the product in the next {answer.horizon_days} days",
        caption_justify="left",
    )
    for column in ("rank", "product", "description", "score", "why"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for row in answer.items.itertuples(index=False):
        table.add_row(str(row.rank), row.stock_code, row.description or "-", f"{row.score:.3f}", row.reason)
    Console().print(table)


# ---- profiles and lifetime value ------------------------------------------------------------


@store_app.command("profiles")
@one_line_errors
def profiles(
    csv: CsvOpt = None,
    summary_json: JsonOpt = None,
    as_of: AsOfOpt = None,
    groups: Annotated[int, typer.Option("--groups", help="How many interest groups to learn from the product descriptions.")] = 12,
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """Each consenting customer's spending tier, lifecycle stage, interests and habits (personalize.profiling)."""
    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.marketing import PROFILING, customer_profiles, export_file, parse_day, staff_principal

    store, settings = store_settings(store, site, out)
    result = customer_profiles(settings, store, staff=staff, as_of=parse_day(as_of, "--as-of"), groups=groups)
    frame, summary = result.frame, result.summary
    console = Console()
    console.print(f"{len(frame):,} customers of {store} consent to profiling (as of {result.as_of})")
    for key in ("tier", "stage", "interest"):
        table = Table(title=key, title_justify="left")
        table.add_column(key)
        table.add_column("customers", justify="right")
        for name, n in list(summary[key].items())[:12]:
            table.add_row(name, f"{n:,}")
        console.print(table)
    who = staff_principal(store, staff)
    if csv is not None:
        export_file(settings, store, who, csv, frame.to_csv(index=False).encode(), kind="profiles", purpose=PROFILING,
                    decision=result.decision, rows=len(frame), customers=len(frame))
        typer.echo(f"wrote {len(frame):,} profiles to {csv}")
    if summary_json is not None:
        body = json.dumps({"store": store, "as_of": result.as_of, **summary}, indent=1).encode()
        export_file(settings, store, who, summary_json, body, kind="profiles-summary", purpose=PROFILING,
                    decision=result.decision, rows=0, customers=len(frame))
        typer.echo(f"wrote the summary to {summary_json}")


@store_app.command("clv")
@one_line_errors
def clv(
    csv: CsvOpt = None,
    days: Annotated[int, typer.Option("--days", help="Horizon of the forecast in days.")] = 90,
    as_of: AsOfOpt = None,
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """Customer lifetime value: expected purchases and spend of each consenting customer (BG/NBD + Gamma-Gamma)."""
    from siloguard.clients.marketing import PROFILING, customer_values, export_file, parse_day, staff_principal, store_currency

    store, settings = store_settings(store, site, out)
    frame, decision, day = customer_values(settings, store, staff=staff, as_of=parse_day(as_of, "--as-of"), days=days)
    spend = frame[f"spend_{days}d"]
    currency = store_currency(settings)
    typer.echo(
        f"{store}: {len(frame):,} consenting customers as of {day}; expected spend in the next {days} days "
        f"{_money(float(spend.sum()), currency)} (median {_money(float(spend.median()), currency)}, "
        f"top decile from {_money(float(spend.quantile(0.9)), currency)}); "
        f"median chance still a customer {frame['p_alive'].median():.0%}"
    )
    if csv is not None:
        export_file(settings, store, staff_principal(store, staff), csv, frame.to_csv(index=False).encode(), kind="clv",
                    purpose=PROFILING, decision=decision, rows=len(frame), customers=len(frame))
        typer.echo(f"wrote {len(frame):,} rows to {csv}")


# ---- campaigns ---------------------------------------------------------------------------------


@campaign_app.command("create")
@one_line_errors
def campaign_create(
    csv: Annotated[Path, typer.Option("--csv", help="Where to write the customers to contact (CSV, mode 0600, audited).")],
    segment: Annotated[Optional[str], typer.Option("--segment", help="Target a segment: champions, loyal, new, promising, needs_attention, at_risk, hibernating.")] = None,
    item: Annotated[Optional[str], typer.Option("--item", help="Target a product (stock code), ranked by the federated model.")] = None,
    top: Annotated[int, typer.Option("--top", help="How many customers in the list (control group included).")] = 100,
    control: Annotated[Optional[str], typer.Option("--control", help="Hold out this share of the list as a control group, stratified by segment (e.g. 10%).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the control draw [default: a random one, recorded].")] = None,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Make the list from purchases before this day (YYYY-MM-DD); the campaign is sent on it [default: the day after the last purchase].")] = None,
    profiles: Annotated[Optional[Path], typer.Option("--profiles", help="The store's customer profiles CSV: adds the contact columns the policy lets you export.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="model.pt to rank with [default: the site's model/].")] = None,
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """A campaign target list of consenting customers, recorded as a campaign (with its control group)."""
    from siloguard.clients.campaign import MARKETING, campaign_list
    from siloguard.clients.marketing import export_file, parse_day, record_campaign, staff_principal
    from siloguard.marketing.experiment import CONTROL, parse_share

    share = parse_share(control) if control is not None else None
    day = parse_day(as_of, "--as-of")
    store, settings = store_settings(store, site, out)
    result = campaign_list(settings, store, segment=segment, item=item, top=top, model_file=model, profiles=profiles,
                           staff=staff, as_of=day, control=share, seed=seed)
    who = staff_principal(store, staff)
    members = result.members.rename(columns={"segment": "stratum"})
    held = int((members["arm"] == CONTROL).sum())
    record = record_campaign(
        settings, store, who, members[["customer_id", "arm", "stratum", "rank"]], target=result.target, purpose=MARKETING,
        as_of=result.as_of, send_date=result.as_of, control_share=share or 0.0, seed=result.seed or 0,
        decision=result.decisions[0], model_version=result.model_version,
    )
    export_file(settings, store, who, csv, result.frame.to_csv(index=False).encode(), kind="campaign", purpose=MARKETING,
                decision=result.decisions[-1], rows=len(result.frame), customers=len(result.frame), extra={"control": held})
    typer.echo(
        f"campaign {record.id}: wrote {len(result.frame):,} customers to contact to {csv} "
        f"(from {result.consented:,} with a live marketing consent; as of {record.as_of}; "
        f"columns: {', '.join(result.frame.columns)}; gate decisions {', '.join(result.decisions)})"
    )
    if held:
        typer.echo(
            f"held out {held:,} customers as the control group ({share:.0%} of each segment, seed {record.seed}): do not contact them; "
            f"measure with: siloguard store campaign report {record.id} --until YYYY-MM-DD"
        )
    typer.echo("score: estimated chance of buying " + ("the product" if item else "anything") + " in the next 28 days")


@campaign_app.command("report")
@one_line_errors
def campaign_report_cmd(
    campaign_id: Annotated[str, typer.Argument(help="The campaign id printed by 'store campaign create'.")],
    until: Annotated[str, typer.Option("--until", help="Count purchases from the send date to this day (YYYY-MM-DD, inclusive).")],
    cost: Annotated[Optional[float], typer.Option("--cost", help="Cost per contact (in the store's currency), for the ROI.")] = None,
    margin: Annotated[Optional[float], typer.Option("--margin", help="Gross margin on revenue as a share (e.g. 0.3), for the ROI.")] = None,
    report_json: JsonOpt = None,
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """What a campaign changed: conversion, revenue and items per customer by arm, uplift with 95% intervals, ROI."""
    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.marketing import MARKETING, campaign_report, export_file, parse_day, staff_principal
    from siloguard.errors import ConfigError

    if (cost is None) != (margin is None):
        raise ConfigError("give both --cost (per contact) and --margin (e.g. 0.3) for the ROI, or neither")
    day = parse_day(until, "--until")
    store, settings = store_settings(store, site, out)
    report = campaign_report(settings, store, campaign_id, until=day, staff=staff, cost_per_contact=cost, margin=margin)
    cur = report["currency"]
    console = Console()
    console.print(
        f"campaign {report['campaign']} ({report['target']}), sent {report['send_date']}, purchases to {report['until']} "
        f"({report['days']} days); data ends {report['data_ends']}"
    )
    arms = Table(title="Arms", title_justify="left")
    for column in ("arm", "customers", "conversion", f"revenue/customer ({cur})", "items/customer", "no longer consenting"):
        arms.add_column(column, justify="left" if column == "arm" else "right")
    for name, arm in report["arms"].items():
        n = max(arm["customers"], 1)
        arms.add_row(name, f"{arm['customers']:,}", f"{arm['conversion']:.1%}", f"{arm['revenue'] / n:,.2f}",
                     f"{arm['items'] / n:,.1f}", f"{report['no_longer_consenting'][name]:,}")
    console.print(arms)
    up = Table(title="Uplift (treatment - control), 95% intervals", title_justify="left")
    for column in ("measure", "absolute", "interval", "relative", "interval"):
        up.add_column(column, justify="left" if column == "measure" else "right")
    for name, u in report["uplift"].items():
        rel = u["relative"]
        fmt = (lambda v: f"{v:+.1%}") if name == "conversion" else (lambda v: f"{v:+,.2f}")  # noqa: E731
        up.add_row(
            name.replace("_", " "), fmt(u["absolute"]["estimate"]), f"[{fmt(u['absolute']['low'])}, {fmt(u['absolute']['high'])}]",
            f"{rel['estimate']:+.1%}" if rel else "-", f"[{rel['low']:+.1%}, {rel['high']:+.1%}]" if rel else "-",
        )
    console.print(up)
    if report.get("roi"):
        r = report["roi"]
        console.print(f"ROI at {r['cost_per_contact']:,.2f} {cur} per contact and {r['margin']:.0%} margin: "
                      f"{r['estimate']:+.0%} (95% interval {r['low']:+.0%} to {r['high']:+.0%})")
    if report_json is not None:
        customers = sum(a["customers"] for a in report["arms"].values())
        export_file(settings, store, staff_principal(store, staff), report_json, json.dumps(report, indent=1).encode(),
                    kind="campaign-report", purpose=MARKETING, decision=report["decision"], rows=0, customers=customers)
        typer.echo(f"wrote {report_json}")


# ---- the store's staff API -----------------------------------------------------------------


@store_app.command("staff-key")
@one_line_errors
def staff_key(
    name: Annotated[str, typer.Argument(help="The staff member (lowercase, e.g. alice): recorded as staff:<name> in the store's audit log.")],
    site: Annotated[Path, typer.Option("--site", help="The store's site directory.")],
) -> None:
    """Make a key for a staff member to call the store's staff API (printed once; the site keeps its hash)."""
    from siloguard.clients.http import new_staff_key

    _, settings = store_settings(None, site, Path("."))
    key = new_staff_key(settings, name)
    typer.echo(key)
    typer.echo(f"the key of staff:{name} (shown once; send it as 'Authorization: Bearer <key>')", err=True)


@store_app.command("serve")
@one_line_errors
def serve_staff(
    site: Annotated[Path, typer.Option("--site", help="The store's site directory.")],
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8710,
    model: Annotated[Optional[Path], typer.Option("--model", help="model.pt to rank with [default: the site's model/].")] = None,
) -> None:
    """Serve the store's staff API (POST /v1/recommendations) with the site's own keys, policy and audit log."""
    import logging

    import uvicorn

    from siloguard.clients.http import create_staff_app
    from siloguard.clients.recommend import Recommender, serving_threads

    serving_threads()
    store, settings = store_settings(None, site, Path("."))
    recommender = Recommender(settings, store, model_file=model)  # built before listening: errors show here
    typer.echo(f"store {store}: staff API on http://{host}:{port}/v1/recommendations (model {recommender.loaded.version})")
    logging.getLogger("casbin").setLevel(logging.WARNING)  # one INFO line per policy request otherwise
    uvicorn.run(create_staff_app(settings, store, recommender=recommender), host=host, port=port, log_level="warning")


# ---- model A/B (mounted on `siloguard model` by siloguard.cli) -------------------------------


@one_line_errors
def model_compare(
    version_a: Annotated[str, typer.Argument(help="Version A, e.g. v1.")],
    version_b: Annotated[str, typer.Argument(help="Version B, e.g. v2.")],
    registry: Annotated[Optional[Path], typer.Option("--registry", help="The coordinator's directory holding models/vN [default: RUN/coordinator].")] = None,
    result_json: JsonOpt = None,
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """Offline A/B test of two model versions on a store's consenting customers (stable-hash arms, NDCG/HR with intervals)."""
    from rich.console import Console
    from rich.table import Table

    from siloguard.clients.compare import compare_versions
    from siloguard.clients.marketing import PROFILING, export_file, staff_principal
    from siloguard.errors import ConfigError

    store, settings = store_settings(store, site, out)
    if registry is None:
        guesses = [Path(out) / "coordinator"] + ([Path(site).resolve().parent.parent / "coordinator"] if site else [])
        registry = next((g for g in guesses if (g / "models").is_dir()), None)
        if registry is None:
            raise ConfigError("pass --registry DIR: the coordinator's directory with models/v1, models/v2, ...")
    result = compare_versions(settings, store, registry, version_a, version_b, staff=staff)
    table = Table(title=f"{version_a} vs {version_b} on {store} ({result['window']['from']} .. {result['window']['to']})", title_justify="left")
    for column in ("arm", "version", "customers", "evaluated", "NDCG@10 [95%]", "HR@10 [95%]"):
        table.add_column(column, justify="left" if column in ("arm", "version") else "right")
    for arm, r in result["arms"].items():
        n, h = r["ndcg@10"], r["hr@10"]
        table.add_row(arm, r["version"], f"{r['customers']:,}", f"{r['evaluated']:,}",
                      f"{n['mean']:.4f} [{n['low']:.4f}, {n['high']:.4f}]", f"{h['mean']:.3f} [{h['low']:.3f}, {h['high']:.3f}]")
    console = Console()
    console.print(table)
    d = result["difference_b_minus_a"]
    console.print(f"B - A: NDCG@10 {d['ndcg@10']['estimate']:+.4f} [{d['ndcg@10']['low']:+.4f}, {d['ndcg@10']['high']:+.4f}], "
                  f"HR@10 {d['hr@10']['estimate']:+.3f} [{d['hr@10']['low']:+.3f}, {d['hr@10']['high']:+.3f}]")
    if result_json is not None:
        evaluated = sum(r["evaluated"] for r in result["arms"].values())
        export_file(settings, store, staff_principal(store, staff), result_json, json.dumps(result, indent=1).encode(),
                    kind="model-compare", purpose=PROFILING, decision=result["decision"], rows=0, customers=evaluated)
        typer.echo(f"wrote {result_json}")


@store_app.command("report")
@one_line_errors
def kpi_report(
    html_file: Annotated[Path, typer.Option("--html", help="Where to write the HTML report (its JSON goes beside it; both 0600, audited).")],
    store: StoreArg = None,
    site: SiteOpt = None,
    out: OutOpt = Path("runs/demo"),
    staff: StaffOpt = "operator",
) -> None:
    """The store's marketing KPI report: segments over time, CLV, interests, campaign results, model quality."""
    from siloguard.clients.kpi import build_kpis, render_html
    from siloguard.clients.marketing import MARKETING, export_file, staff_principal

    store, settings = store_settings(store, site, out)
    facts = build_kpis(settings, store, staff=staff)
    who = staff_principal(store, staff)
    decision = facts["decisions"][0]
    json_file = html_file.with_suffix(".json")
    for path, body in ((json_file, json.dumps(facts, indent=1).encode()), (html_file, render_html(facts).encode())):
        export_file(settings, store, who, path, body, kind="kpi-report", purpose=MARKETING, decision=decision,
                    rows=0, customers=facts["marketing_consenting"])
    typer.echo(f"wrote {html_file} and {json_file} ({facts['marketing_consenting']:,} customers with a live marketing consent; "
               f"{len(facts['campaigns'])} campaign(s))")
