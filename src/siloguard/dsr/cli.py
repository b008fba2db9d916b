"""``siloguard store sync``: a store pulls its erasure tasks, erases, and posts signed receipts."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from siloguard.clients.cli import store_app
from siloguard.config import Settings
from siloguard.storage.cli import one_line_errors

__all__ = ["sync"]

KEY_ENV = "SILOGUARD_STORE_KEY"


def _echo(item: dict) -> None:
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
    store: Annotated[str, typer.Option("--store", help="This store's id.")],
    api: Annotated[str, typer.Option("--api", help="The privacy API's base URL.")] = "http://127.0.0.1:8000",
    work_dir: Annotated[Optional[str], typer.Option("--work-dir", help="The run directory holding stores/<store>.csv. \\[default: settings work_dir]")] = None,
) -> None:
    """Do this store's pending erasures: erase rows, embedding and data key; post signed receipts.

    The store key is read from the SILOGUARD_STORE_KEY environment variable (not an option,
    so it stays out of shell history and process lists).
    """
    import httpx

    from siloguard.dsr.errors import DsrError
    from siloguard.dsr.sync import sync_store
    from siloguard.errors import ConfigError

    key = os.environ.get(KEY_ENV)
    if not key:
        raise ConfigError(f"set {KEY_ENV} to this store's API key (from `siloguard keys create --role store_operator --store {store}`)")
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
    typer.echo(f"store {store}: {done} erasure task(s) done" + (f", {len(posted) - done} cancelled" if done < len(posted) else ""))
