"""``siloguard audit ...``: keys, signed tree heads, verification, proofs, export, report.

``audit_app`` is mounted by ``siloguard.cli`` as ``siloguard audit``. Every command builds one
:class:`~siloguard.config.Settings` (options over ``SILOGUARD_*`` variables over defaults) and
passes it down. A refused input or a failed check prints one ``error:`` line (after the list
of findings, for ``verify``) and exits with the error's code: 6 for a refused input, 7 when
verification fails, 8 for a database problem, 2 for a bad setting.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from siloguard._files import write_atomic
from siloguard.config import Settings
from siloguard.errors import AuditError, AuditIntegrityError, ConfigError
from siloguard.storage.cli import DbOpt, command_group, one_line_errors

__all__ = ["audit_app"]

audit_app = command_group(
    "audit", "Tamper-evident audit log: keys, signed tree heads, verification, proofs, export and the officer's report."
)

PublicKeyOpt = Annotated[
    Optional[Path], typer.Option("--public-key", help="Trusted Ed25519 public key (PEM). \\[default: settings audit.public_key]")
]
SigningKeyOpt = Annotated[
    Optional[Path],
    typer.Option("--signing-key", help="Ed25519 private key (PEM, mode 0600). \\[default: settings audit.signing_key]"),
]
AgainstOpt = Annotated[
    Optional[Path],
    typer.Option("--against", help="A tree head saved earlier (from `audit head --out`): prove the log still extends it."),
]

RunOpt = Annotated[Optional[Path], typer.Option(
    "--run", help="A run or a store's site (e.g. runs/demo, runs/demo/stores/germany): its database and its audit keys "
    "(keys/audit-signing.*). \\[default: the environment's settings]")]


def _settings(*, db: str | None = None, signing_key: Path | None = None, public_key: Path | None = None,
              run: Path | None = None) -> Settings:
    base = Settings.build()
    if run is not None:
        from siloguard.errors import ConfigError
        from siloguard.runs import run_settings

        if not Path(run).is_dir():
            raise ConfigError(f"--run {run}: no such directory; pass a run (as siloguard demo/train made it) or a store's site")
        base = run_settings(run, base)
    return base.with_overrides(database={"url": db}, audit={"signing_key": signing_key, "public_key": public_key})


def _open(settings: Settings, *, sign: bool = False) -> Any:
    from siloguard.audit.heads import load_signing_key
    from siloguard.audit.log import AuditLog

    signer = load_signing_key(settings.audit.signing_key) if sign else False
    return AuditLog.open(settings, signer=signer)


def _public_key(settings: Settings) -> Any:
    from siloguard.audit.heads import load_public_key

    return load_public_key(settings.audit.public_key)


def _write_text(path: Path, text: str) -> None:
    """Write a whole file or nothing (temporary file, then rename)."""
    path = Path(path)
    if path.is_dir():
        raise AuditError(f"{path} is a directory: give a file name")
    if not path.parent.exists():
        raise AuditError(f"{path.parent}: no such directory")
    write_atomic(path, text.encode("utf-8"))


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@audit_app.command()
@one_line_errors
def keygen(signing_key: SigningKeyOpt = None, public_key: PublicKeyOpt = None, run: RunOpt = None) -> None:
    """Create the Ed25519 key pair that signs tree heads (private key mode 0600)."""
    from siloguard.audit.heads import generate_keypair

    settings = _settings(signing_key=signing_key, public_key=public_key, run=run)
    kid = generate_keypair(settings.audit.signing_key, settings.audit.public_key)
    typer.echo(f"private key: {settings.audit.signing_key} (mode 0600; keep it on the signing host only)")
    typer.echo(f"public key:  {settings.audit.public_key} (give it to whoever verifies the log)")
    typer.echo(f"key id:      {kid}")


@audit_app.command()
@one_line_errors
def head(
    db: DbOpt = None,
    signing_key: SigningKeyOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also save the head to this file (keep it for --against).")] = None,
    run: RunOpt = None,
) -> None:
    """Sign a tree head for the log as it is now and print it (JSON)."""
    settings = _settings(db=db, signing_key=signing_key, run=run)
    with _open(settings, sign=True) as log:
        signed = log.sign_head()
    text = _dump(signed.to_json())
    if out is not None:
        _write_text(out, text)
    typer.echo(text, nl=False)


@audit_app.command()
@one_line_errors
def verify(
    db: DbOpt = None,
    public_key: PublicKeyOpt = None,
    against: AgainstOpt = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Pass a log with no events (a brand-new deployment); otherwise it fails.")
    ] = False,
    witnessed: Annotated[
        Optional[str],
        typer.Option("--witnessed", help="A store's log: also check it against every head of --store the coordinator "
                     "witnessed (the coordinator's database URL, or its directory holding siloguard.db)."),
    ] = None,
    store: Annotated[Optional[str], typer.Option("--store", help="The store whose log this is (with --witnessed).")] = None,
    run: RunOpt = None,
) -> None:
    """Recompute the log from its events, check every signed head, and (--against) a saved head.

    An empty log fails unless --allow-empty: a wiped log is empty too. For a store's log
    (``--db`` its database, ``--public-key`` its keys/audit-signing.pub), ``--witnessed``
    checks it against the heads the coordinator recorded: a store cannot rewrite its history.
    """
    from siloguard.audit.heads import SignedTreeHead

    settings = _settings(db=db, public_key=public_key, run=run)
    key = _public_key(settings)
    saved = SignedTreeHead.read(against) if against is not None else None
    heads = _witnessed_heads(witnessed, store) if witnessed is not None else None
    with _open(settings) as log:
        report = log.verify(key, against=saved)  # an empty log passes here: the library allows it
        if heads is not None:
            from siloguard.audit.witness import verify_witnessed

            lines = verify_witnessed(log, key, heads)
    if report.tree_size == 0:
        if not allow_empty:
            raise AuditIntegrityError(
                "the audit log holds no events: nothing shows it was not wiped; "
                "if this is a brand-new deployment, pass --allow-empty"
            )
        typer.echo("OK: the audit log is empty (0 events, allowed by --allow-empty)")
    else:
        typer.echo(f"OK: {report.tree_size} events, root {report.root_hash.hex()}")
    typer.echo(f"{report.heads_checked} signed tree head(s) verified", nl=False)
    if report.latest_head is not None:
        typer.echo(f"; latest #{report.latest_head.seq} covers {report.latest_head.tree_size} events", nl=False)
    typer.echo("")
    if saved is not None:
        typer.echo(f"consistent with the saved tree head #{saved.seq} (size {saved.tree_size})")
    if report.uncovered:
        typer.echo(f"note: the newest {report.uncovered} event(s) are not under a signed head yet (run `siloguard audit head`)")
    if heads is not None:
        typer.echo(f"consistent with all {len(lines)} head(s) of store {store} the coordinator witnessed")


def _witnessed_heads(witnessed: str, store: str | None) -> list:
    from siloguard.audit.log import AuditLog
    from siloguard.audit.witness import witnessed_heads

    if not store:
        raise ConfigError("--witnessed needs --store: the store whose log --db is")
    url = witnessed if "://" in witnessed else f"sqlite:///{(Path(witnessed) / 'siloguard.db').resolve()}"
    if "://" not in witnessed and not (Path(witnessed) / "siloguard.db").is_file():
        raise ConfigError(f"--witnessed {witnessed}: no siloguard.db there; pass the coordinator's directory or database URL")
    log = AuditLog.open(_settings(db=url), signer=False)
    try:
        heads = witnessed_heads((stored.event for stored in log.iter_events()), store).get(store, [])
    finally:
        log.close()
    if not heads:
        raise AuditIntegrityError(f"the coordinator witnessed no head of store {store!r}: nothing to check against")
    return heads


@audit_app.command()
@one_line_errors
def prove(
    event_id: Annotated[str, typer.Argument(help="The event's id (a UUID).")],
    db: DbOpt = None,
    public_key: PublicKeyOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the proof to this file.")] = None,
    run: RunOpt = None,
) -> None:
    """Print an RFC 9162 inclusion proof of one event in the latest signed tree head (JSON)."""
    settings = _settings(db=db, public_key=public_key, run=run)
    key = _public_key(settings)
    with _open(settings) as log:
        proof = log.prove(event_id)
    try:
        proof.verify(key, event_id)  # never hand out a proof that does not check out
    except AuditIntegrityError as exc:
        raise AuditIntegrityError(
            f"the log produced a proof that fails verification ({exc}): run `siloguard audit verify`"
        ) from None
    text = _dump(proof.to_json())
    if out is not None:
        _write_text(out, text)
    typer.echo(text, nl=False)


@audit_app.command()
@one_line_errors
def export(
    out: Annotated[Path, typer.Option("--out", help="Directory for events.jsonl and tree-head.json.")],
    db: DbOpt = None,
    run: RunOpt = None,
) -> None:
    """Export the events the latest signed head covers (JSON lines) and that head.

    Each line of events.jsonl is exactly the bytes that were hashed as a Merkle leaf, so
    anyone can recompute the root and check the head's signature without siloguard.
    """
    settings = _settings(db=db, run=run)
    with _open(settings) as log:
        signed = log.latest_head()
        if signed is None:
            raise AuditError("no signed tree head yet: sign one with `siloguard audit head`")
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise AuditError(f"{out} exists and is not a directory: choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".events.jsonl.", suffix=".tmp")
        count = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for stored in log.iter_events(0, signed.tree_size):
                    handle.write(stored.body + b"\n")
                    count += 1
            if count != signed.tree_size:
                raise AuditIntegrityError(f"the log holds {count} of the {signed.tree_size} events its head covers")
            os.chmod(tmp, 0o644)
            os.replace(tmp, out / "events.jsonl")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _write_text(out / "tree-head.json", _dump(signed.to_json()))
    typer.echo(f"exported {count} events and tree head #{signed.seq} to {out}")


@audit_app.command()
@one_line_errors
def report(
    out: Annotated[Path, typer.Option("--out", help="Directory for report.html and report.json.")],
    db: DbOpt = None,
    public_key: PublicKeyOpt = None,
    against: AgainstOpt = None,
    keys_root: Annotated[
        Optional[Path],
        typer.Option(
            "--keys-root",
            help="Key store of the stores (stores/<store>/...): resolves blinded subject references, so erased "
            "subjects show as such; nothing is created there. \\[default: settings keys.root]",
        ),
    ] = None,
    pdf: Annotated[bool, typer.Option("--pdf", help="Also print report.pdf (headless Chromium).")] = False,
    run: RunOpt = None,
) -> None:
    """Verify the log, then write the compliance officer's report (HTML + JSON, and PDF with --pdf) for its latest head.

    Data subjects are resolved with the subject keys under --keys-root (read only).
    A subject whose key was destroyed (erased) shows as erased-subject.
    Without store keys there, the report says subjects were not resolved.
    """
    from siloguard.audit.heads import SignedTreeHead
    from siloguard.audit.report import build_report, write_report
    from siloguard.privacy.keys import subject_resolver  # the stores' key store, read only

    settings = _settings(db=db, public_key=public_key, run=run).with_overrides(keys={"root": keys_root})
    key = _public_key(settings)
    saved = SignedTreeHead.read(against) if against is not None else None
    resolver = subject_resolver(settings.keys.root)
    subjects, stores = resolver if resolver is not None else (None, None)
    with _open(settings) as log:
        from siloguard.policies.taxonomy import purpose_name

        built = build_report(log, key, against=saved, subjects=subjects, subject_stores=stores, purpose_name=purpose_name)
    html_path, json_path = write_report(built, out)
    head_json = built.facts["tree_head"]
    typer.echo(f"report for tree head #{head_json['seq']} ({head_json['tree_size']} events): {html_path}, {json_path}")
    if pdf:
        from rich.console import Console

        from siloguard.audit.report.pdf import print_pdf

        with Console(stderr=True).status("Printing the report to PDF (headless Chromium)..."):
            pdf_path = print_pdf(html_path, html_path.with_suffix(".pdf"))
        typer.echo(f"PDF: {pdf_path}")
    if not built.facts["subjects"]["resolved"]:
        typer.echo(f"note: subjects were not resolved: no store keys under {settings.keys.root}")
