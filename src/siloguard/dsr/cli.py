"""``siloguard store sync`` (a store pulls its erasure tasks, erases, posts signed receipts) and
``siloguard answer keygen|open`` (a data subject's key for sealed access answers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from siloguard.clients.cli import env_note, store_app
from siloguard.config import Settings
from siloguard.storage.cli import command_group, one_line_errors

__all__ = ["answer_app", "sync"]

KEY_ENV = "SILOGUARD_STORE_KEY"


def _echo(item: dict) -> None:
    if item.get("kind") == "effects":
        typer.echo(f"{item['task']}: recorded {item['events']} consent event(s)")
        return
    if item.get("kind") == "access":
        typer.echo(f"{item['task']}: answered with {item['records']} record(s)" + (", sealed to the subject's key" if item["sealed"] else ""))
        return
    if "skipped" in item:
        typer.echo(f"{item['task']}: not erased: the task is {item['skipped']} (the request was denied or closed)")
        return
    outcome = "receipt REFUSED" if "refused" in item else "receipt accepted"
    typer.echo(
        f"{item['task']}: erased {item['rows_erased']} row(s), {item['embeddings_erased']} embedding(s), "
        f"data key {'destroyed' if item['key_destroyed'] else 'NOT destroyed'}; {outcome}"
    )


@store_app.command("sync")
@one_line_errors
def sync(
    store: Annotated[Optional[str], typer.Option("--store", help="This store's id (implied by --site).")] = None,
    api: Annotated[str, typer.Option("--api", help="The privacy API's base URL.")] = "http://127.0.0.1:8000",
    site: Annotated[Optional[Path], typer.Option("--site", help="The store's site directory (siloguard store init).")] = None,
    work_dir: Annotated[Optional[str], typer.Option("--work-dir", help="A run prepared in one directory by an older siloguard (its stores/<store>.csv). \\[default: settings work_dir]")] = None,
) -> None:
    """Do this store's pending tasks on its own site: consent changes and opt-outs (recorded in its
    registry), its part of access answers (sealed to the subject's key when given), erasures
    (rows, embedding, consent and data key; a signed receipt each).

    The store key is read from the SILOGUARD_STORE_KEY environment variable (not an option,
    so it stays out of shell history and process lists).
    """
    import httpx

    from siloguard.dsr.errors import DsrError
    from siloguard.dsr.sync import sync_store
    from siloguard.errors import ConfigError

    from siloguard.runs import site_of

    key = os.environ.get(KEY_ENV)
    if not key:
        raise ConfigError(f"set {KEY_ENV} to this store's API key (from `siloguard keys create --role store_operator --store {store or 'STORE'}`)")
    if site is not None:
        env_note()
        name, settings = site_of(site)
        if store is not None and store != name:
            raise ConfigError(f"--site {site} is store {name!r}'s site, not {store!r}'s")
        store = name
    else:
        if store is None:
            raise ConfigError("pass --site DIR (the store's site), or --store with a run prepared in one directory")
        settings = Settings.build()
        if work_dir is not None:
            settings = settings.with_overrides(work_dir=work_dir)  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            posted = sync_store(client, settings, store)
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the API at {api} ({type(exc).__name__}); check --api") from None
    except DsrError as exc:
        for item in getattr(exc, "done", []):
            _echo(item)
        raise
    for item in posted:
        _echo(item)
    done = sum("skipped" not in item for item in posted)
    typer.echo(f"store {store}: {done} task(s) done" + (f", {len(posted) - done} cancelled" if done < len(posted) else ""))



@store_app.command("receipt-key")
@one_line_errors
def receipt_key(site: Annotated[Path, typer.Option("--site", help="The store's site directory.")]) -> None:
    """Print the store's public receipt key (base64), for the privacy service to register
    (`siloguard keys create --role store_operator --store STORE --receipt-key ...`)."""
    import base64

    from siloguard.dsr.receipts import public_key_bytes
    from siloguard.privacy.keys import existing_store_keys
    from siloguard.runs import site_of

    store, settings = site_of(site)
    typer.echo(base64.b64encode(public_key_bytes(existing_store_keys(settings.keys.root, store))).decode())
    typer.echo(f"store {store}'s receipt key: give it to the privacy service's operator (it is public)", err=True)


# ---- siloguard answer keygen|open: a data subject's side of a sealed access answer -------------

answer_app = command_group("answer", "A data subject's key for sealed access answers: keygen, open.")


@answer_app.command("keygen")
@one_line_errors
def answer_keygen(
    out: Annotated[Path, typer.Option("--out", help="Where to write your private key (PEM, mode 0600).")],
) -> None:
    """Make a P-256 key pair; prints the public key to send as answer_key when verifying."""
    from cryptography.hazmat.primitives import serialization

    from siloguard._files import write_atomic
    from siloguard.dsr.sealed import new_key_pair
    from siloguard.errors import ConfigError

    if out.exists():
        raise ConfigError(f"{out} exists: choose another --out (a key is never overwritten)")
    private, public = new_key_pair()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(out, pem, mode=0o600)
    typer.echo(public)
    typer.echo(f"private key in {out}; send the line above as answer_key with your code", err=True)


@answer_app.command("open")
@one_line_errors
def answer_open(
    answer: Annotated[Path, typer.Argument(help="The JSON from GET /v1/requests/{id}/access ('-' = standard input).")],
    key: Annotated[Path, typer.Option("--key", help="Your private key from `siloguard answer keygen`.")],
) -> None:
    """Open a sealed access answer with your private key; prints the answer (JSON)."""
    import json
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from siloguard.dsr.sealed import open_parts
    from siloguard.errors import ConfigError

    try:
        text = sys.stdin.read() if str(answer) == "-" else answer.read_text()
        reply = json.loads(text)
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the answer or the key ({type(exc).__name__}): pass the saved JSON and your PEM key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(reply, dict) or "sealed" not in reply:
        raise ConfigError("expected the JSON of a sealed access answer ({'request', 'sealed'}) and a P-256 private key")
    try:
        opened = open_parts(private, reply["sealed"], str(reply.get("request", "")))
    except ValueError:
        raise ConfigError("the sealed answer is malformed: pass the JSON exactly as the API returned it") from None
    typer.echo(json.dumps(opened, indent=2, sort_keys=True))
