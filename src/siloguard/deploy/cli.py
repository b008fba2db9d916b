"""``siloguard pki init``, ``coordinator start``, ``store enroll|start``, ``federate``.

The commands of a real deployment (docs/DEPLOY.md): the coordinator makes the PKI and runs
the SuperLink; each store's operator enrols the store (its node key registered with the
SuperLink) and runs its SuperNode next to its data; the coordinator submits the federation
and reads back whether it completed. ``siloguard.cli`` imports this module, which registers
``enroll`` and ``start`` on the ``store`` group and mounts the rest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from siloguard.clients.cli import store_app
from siloguard.config import Settings
from siloguard.storage.cli import command_group, one_line_errors

__all__ = ["coordinator_app", "federate", "pki_app"]

pki_app = command_group("pki", "The deployment's CA and the SuperLink's TLS certificate.")
coordinator_app = command_group("coordinator", "Run the coordinator (the Flower SuperLink).")

RootOpt = Annotated[Optional[Path], typer.Option("--root", help="Deployment directory (PKI, node keys, Flower home). \\[default: deploy]")]
HostOpt = Annotated[Optional[str], typer.Option("--host", help="SuperLink address. \\[default: 127.0.0.1]")]
PortOpt = Annotated[Optional[int], typer.Option("--port", help="SuperLink HTTPS port. \\[default: 9093]")]


def _settings(root: Path | None, host: str | None, port: int | None, **sections: dict) -> Settings:
    return Settings.build().with_overrides(deploy={"root": root, "host": host, "port": port}, **sections)


@pki_app.command("init")
@one_line_errors
def pki_init(
    root: RootOpt = None,
    host: Annotated[Optional[list[str]], typer.Option("--host", help="Name or IP the SuperLink is reached at (repeat). \\[default: 127.0.0.1, localhost]")] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity of the CA and certificate.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA (every store then needs the new ca.pem).")] = False,
) -> None:
    """Create the deployment's CA and the SuperLink's TLS certificate (private keys mode 0600)."""
    from siloguard.deploy.pki import init_pki

    settings = _settings(root, None, None)
    pki = init_pki(settings.deploy.root, host or ["127.0.0.1", "localhost"], days=days, force=force)
    typer.echo(f"CA certificate (give it to every store): {pki.ca_cert}")
    typer.echo(f"SuperLink certificate: {pki.server_cert} (key {pki.server_key}, mode 0600)")


@coordinator_app.command("start")
@one_line_errors
def coordinator_start(root: RootOpt = None, host: HostOpt = None, port: PortOpt = None) -> None:
    """Run the SuperLink with TLS and SuperNode authentication until Ctrl-C."""
    from siloguard.deploy.processes import flower_env, start, stop, superlink_command, wait_for_port

    settings = _settings(root, host, port)
    command = superlink_command(settings)
    log = settings.deploy.root / "logs" / "superlink.log"
    link = start("superlink", command, log, flower_env(settings))
    try:
        wait_for_port(settings.deploy.host, settings.deploy.port, time.monotonic() + settings.deploy.connect_timeout, link)
        typer.echo(f"SuperLink (pid {link.pid}) on https://{settings.deploy.host}:{settings.deploy.port}, "
                   f"SuperNode authentication on; log {log}. Ctrl-C stops it.")
        link.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(link)


@store_app.command("enroll")
@one_line_errors
def store_enroll(
    store: Annotated[str, typer.Argument(help="The store's name as in the run (e.g. germany).")],
    root: RootOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Make a new key pair even if the store has one.")] = False,
) -> None:
    """Create the store's node key pair and register its public key with the SuperLink (audited)."""
    from siloguard.audit import AuditEvent, AuditLog
    from siloguard.audit.vocabulary import NODE_ENROLLED
    from siloguard.deploy.control import register_node
    from siloguard.deploy.pki import fingerprint, make_node_keys, node_keys

    settings = _settings(root, host, port)
    keys = node_keys(settings.deploy.root, store)
    if force or not keys.private_key.is_file():
        keys = make_node_keys(settings.deploy.root, store, force=force)
    node_id = register_node(settings, keys.public_key, store)
    audit = AuditLog.open(settings)
    try:
        audit.append([AuditEvent(actor="operator", action=NODE_ENROLLED, resource=f"node:{store}",
                                 purpose="personalize.profiling", decision="allow", store=store)])
    finally:
        audit.close()
    typer.echo(f"store {store} enrolled: node {node_id}, key {fingerprint(keys.public_key)} (private key {keys.private_key}, mode 0600)")


@store_app.command("start")
@one_line_errors
def store_start(
    store: Annotated[str, typer.Argument(help="The store's name, as enrolled.")],
    site: Annotated[Optional[Path], typer.Option("--site", help="The store's site (siloguard store init): its file, database and keys.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Instead of --site: a bare silo file of a run prepared in one directory (older layout).")] = None,
    root: RootOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    runtime_port: Annotated[int, typer.Option("--runtime-port", help="The node's loopback port for its ClientApps (unique per node on a machine).")] = 9094,
) -> None:
    """Run the store's SuperNode (TLS, its node key, its silo behind its gate) until Ctrl-C."""
    from siloguard.deploy.processes import flower_env, start, stop, supernode_command, wait_for_log
    from siloguard.errors import DataError

    from siloguard.errors import ConfigError
    from siloguard.runs import site_of

    if (site is None) == (data is None):
        raise ConfigError("pass --site DIR (the store's site from 'siloguard store init'), or --data FILE for an older run")
    if site is not None:
        name, _ = site_of(site)  # refuses a directory that is no site
        if name != store:
            raise ConfigError(f"--site {site} is store {name!r}'s site, not {store!r}'s")
    elif not data.is_file():  # type: ignore[union-attr]
        raise DataError(f"--data {data}: no such file; pass the store's Online Retail CSV")
    settings = _settings(root, host, port)
    log = settings.deploy.root / "logs" / f"supernode-{store}.log"
    node = start(f"supernode {store}", supernode_command(settings, store, data, runtime_port=runtime_port, site=site), log,
                 flower_env(settings))
    try:
        match = wait_for_log(node, r"SuperNode ID: (\d+)", time.monotonic() + settings.deploy.connect_timeout)
        typer.echo(f"store {store}: SuperNode {match.group(1) if match else '?'} (pid {node.pid}) connected; log {log}. Ctrl-C stops it.")
        node.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(node)


@one_line_errors
def federate(
    out: Annotated[Path, typer.Option("--out", help="The coordinator's work directory: run.json, catalogue, models, its database (stores need none of it on disk).")] = Path("runs/deploy"),
    data: Annotated[Optional[Path], typer.Option("--data", help="Online Retail file the run is prepared from (catalogue, split). \\[default: embedded sample]")] = None,
    consent: Annotated[Optional[Path], typer.Option("--consent", help="Consent records CSV imported when the run is prepared.")] = None,
    publication: Annotated[Optional[list[Path]], typer.Option("--publication", help="A store's publication.json (repeat, one per store): the run is prepared from these, the coordinator reads no store data.")] = None,
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="Federated rounds. \\[default: 7]")] = None,
    min_stores: Annotated[Optional[int], typer.Option("--min-stores", help="Fewest stores a round goes on with. \\[default: 2]")] = None,
    app_dir: Annotated[Path, typer.Option("--app", help="The siloguard Flower app (directory with pyproject.toml).")] = Path("."),
    root: RootOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the whole ServerApp log.")] = False,
) -> None:
    """Submit the federation to the SuperLink (flwr run), stream it, and check that it completed."""
    from siloguard.deploy.control import federate as submit
    from siloguard.federation.registry import current_version, load_manifest
    from siloguard.federation.runner import prepare_run

    base = Settings.build()
    if "SILOGUARD_DATABASE__URL" not in os.environ:
        base = base.with_overrides(database={"url": f"sqlite:///{(out / 'siloguard.db').resolve()}"})
    settings = base.with_overrides(
        work_dir=out.resolve(),  # type: ignore[arg-type]
        deploy={"root": root, "host": host, "port": port},
        data={"path": data.resolve() if data else None, "consent": consent.resolve() if consent else None},
        federation={"rounds": rounds, "min_stores": min_stores},
    )
    from siloguard.errors import ConfigError

    if not (app_dir / "pyproject.toml").is_file():  # before anything is prepared or written
        raise ConfigError(f"{app_dir} is not a Flower app (no pyproject.toml): pass --app with the siloguard project directory")
    if publication and (settings.work_dir / "run.json").is_file():
        from siloguard.runs import Publication, RunManifest

        given = sorted(Publication.read(p).store for p in publication)
        if given != RunManifest.read(settings.work_dir).names:
            raise ConfigError(
                f"{settings.work_dir} already holds a run of stores {', '.join(RunManifest.read(settings.work_dir).names)}, "
                f"not the {', '.join(given)} of these publications: use a new --out for a new federation"
            )
    if publication and not (settings.work_dir / "run.json").is_file():
        from siloguard.federation.prepare import prepare_federation
        from siloguard.runs import Publication

        prepared_sites = prepare_federation(settings, [Publication.read(p) for p in publication])
        typer.echo(f"prepared the run in {settings.work_dir} from {len(publication)} publication(s): "
                   f"stores {', '.join(prepared_sites.stores)}, {prepared_sites.items:,} products")
    elif not (settings.work_dir / "run.json").is_file():
        prepared = prepare_run(settings)
        typer.echo(f"prepared the run in {settings.work_dir}: stores {', '.join(sorted(prepared.stores))}")
    before = current_version(settings.work_dir)

    def show(line: str) -> None:
        if verbose or any(k in line for k in ("ROUND", "dropped", "rejected", "Received", "ERROR", "Exit Code", "started run")):
            typer.echo(line)

    result = submit(settings, app_dir, run_config(settings), on_line=show)
    version = current_version(settings.work_dir)
    if version is None or version == before:
        from siloguard.errors import FederationError

        raise FederationError(f"run {result.run_id} completed but registered no model in {settings.work_dir / 'models'}")
    manifest = load_manifest(settings.work_dir, version)
    typer.echo(f"run {result.run_id} {result.status}: model {version} (parent {manifest['parent'] or 'none'}, "
               f"sha256 {manifest['sha256'][:16]}...) from {', '.join(manifest['participants'])}")


def run_config(settings: Settings) -> dict[str, object]:
    """The run-config overrides ``flwr run`` gets: only keys the app's pyproject declares.

    Other settings reach the ServerApp and ClientApps through the SILOGUARD_* environment of
    ``coordinator start`` and ``store start`` (docs/DEPLOY.md).
    """
    s = settings
    return {
        "work-dir": str(s.work_dir),
        "data.path": str(s.data.path) if s.data.path else "",
        "data.split-date": str(s.data.split_date) if s.data.split_date else "",
        "data.test-weeks": s.data.test_weeks,
        "data.uk-stores": s.data.uk_stores,
        "model.dim": s.model.dim,
        "model.local-epochs": s.model.local_epochs,
        "model.seed": s.model.seed,
        "federation.rounds": s.federation.rounds,
        "federation.min-stores": s.federation.min_stores,
        "privacy.enabled": s.privacy.enabled,
        "privacy.epsilon-cap": s.privacy.epsilon_cap,
        "privacy.epsilon": s.privacy.epsilon if s.privacy.epsilon is not None else "",
        "privacy.noise-multiplier": s.privacy.noise_multiplier if s.privacy.noise_multiplier is not None else "",
        "database.url": s.database.url,
    }
