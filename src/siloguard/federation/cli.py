"""``siloguard model list | show | rollback``: the run's model registry.

``siloguard.cli`` mounts ``model_app``. Every command reads the registry under ``--out`` (the
run's work directory); ``rollback`` is recorded in the audit log before it takes effect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from siloguard.storage.cli import command_group, one_line_errors

__all__ = ["model_app"]

model_app = command_group("model", "The model registry: versions, manifests, rollback.")

OutOpt = Annotated[Path, typer.Option("--out", help="The run (as siloguard demo/train made it) or the coordinator's directory (holds models/ and model).")]


def _coordinator(out: Path) -> Path:
    """The coordinator's directory of a run: ``out`` itself, or ``out/coordinator`` for a run laid out by demo/train."""
    from siloguard.errors import ConfigError

    out = Path(out)
    if (out / "coordinator").is_dir() and not (out / "models").is_dir():
        return out / "coordinator"
    if not out.is_dir():
        raise ConfigError(f"--out {out}: no such run; pass the run siloguard demo/train made (e.g. runs/demo)")
    return out


@model_app.command("list")
@one_line_errors
def model_list(out: OutOpt = Path("runs/train")) -> None:
    """Every model version, oldest first; '*' marks the current one."""
    from rich.console import Console
    from rich.table import Table

    from siloguard.federation.registry import current_version, list_versions

    out = _coordinator(out)
    current = current_version(out)
    table = Table(title=f"Models in {out}", title_justify="left")
    for col in ("", "version", "parent", "created", "rounds", "stores", "NDCG@10", "sha256"):
        table.add_column(col)
    for m in list_versions(out):
        ndcg = m["metrics"]["overall"].get("ndcg@10")
        table.add_row("*" if m["version"] == current else "", m["version"], m.get("parent") or "-", m.get("created", "-"),
                      str(m["rounds"]), str(len(m.get("participants", m["stores"]))),
                      "-" if ndcg is None else f"{ndcg:.4f}", m["sha256"][:16])
    Console().print(table)


@model_app.command("show")
@one_line_errors
def model_show(
    version: Annotated[str, typer.Argument(help="e.g. v2; default: the current version")] = "",
    out: OutOpt = Path("runs/train"),
    as_json: Annotated[bool, typer.Option("--json", help="The whole manifest as JSON (settings, per-round history).")] = False,
) -> None:
    """A version's summary: where it came from, how good it is, what privacy it spent (--json: the whole manifest)."""
    from siloguard.errors import ConfigError
    from siloguard.federation.registry import current_version, load_manifest

    out = _coordinator(out)
    version = version or current_version(out) or ""
    if not version:
        raise ConfigError(f"no model in {out} yet: run 'siloguard train' or 'siloguard federate' first")
    manifest = load_manifest(out, version)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    overall = manifest.get("metrics", {}).get("overall", {})
    lines = [
        f"model {manifest['version']} (parent {manifest.get('parent') or 'none'}), created {manifest.get('created', '-')}",
        f"sha256 {manifest['sha256']}",
        f"{manifest['rounds']} round(s); stores: {', '.join(manifest.get('participants', manifest.get('stores', [])))}",
        "overall: " + ", ".join(f"{k} {overall[k]:.4f}" for k in ("ndcg@10", "hr@10", "recall@20", "new.ndcg@10") if k in overall),
    ]
    eps = manifest.get("epsilon_per_store") or {}
    lines.append("privacy: " + (", ".join(f"{s} epsilon {e:.2f}" for s, e in sorted(eps.items()))
                                if eps else "trained without differential privacy"))
    lines.append("(--json for the whole manifest)")
    typer.echo("\n".join(lines))


@model_app.command("rollback")
@one_line_errors
def model_rollback(
    version: Annotated[str, typer.Argument(help="The version to make current again, e.g. v1.")],
    out: OutOpt = Path("runs/train"),
) -> None:
    """Make an earlier version current again (its file checked against its sha256; audited)."""
    from siloguard.federation.registry import rollback
    from siloguard.runs import run_settings

    manifest = rollback(run_settings(out), version)  # the run's audit log lives in its work directory
    typer.echo(f"current model is now {manifest['version']} (sha256 {manifest['sha256'][:16]}...)")
