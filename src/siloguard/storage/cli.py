"""``siloguard db ...``: create or migrate the database schema (Alembic).

``db_app`` is meant to be mounted by ``siloguard.cli`` as ``siloguard db``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, Optional, TypeVar

import typer

from siloguard.config import Settings
from siloguard.errors import SiloguardError

__all__ = ["DbOpt", "command_group", "db_app", "one_line_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    """A command's SiloguardError becomes ``error: ...`` on stderr (with its listed problems
    above it) and the error's exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SiloguardError as exc:
            for problem in getattr(exc, "problems", ()):
                typer.echo(f"  - {problem}", err=True)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]

def command_group(name: str, help: str, *, invoke_without_command: bool = False) -> typer.Typer:  # noqa: A002
    """A ``siloguard <name> ...`` command group, configured like every other one: help when
    called bare (unless it has a command of its own), no shell-completion options, and no
    Rich tracebacks (errors are one line: :func:`one_line_errors`)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=not invoke_without_command,
        invoke_without_command=invoke_without_command,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


db_app = command_group("db", "The database: create or migrate its tables (SQLite file by default, PostgreSQL by URL).")

DbOpt = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL (sqlite:///PATH or postgresql+psycopg://...). \\[default: settings database.url]"),
]


def _engine(db: str | None):  # type: ignore[no-untyped-def]
    from siloguard.storage.db import create_engine

    settings = Settings.build().with_overrides(database={"url": db})
    return create_engine(settings.database.url)


@db_app.command()
@one_line_errors
def upgrade(db: DbOpt = None) -> None:
    """Create the tables, or migrate them to this siloguard's schema."""
    from siloguard.storage.db import current_revision, upgrade_database

    engine = _engine(db)
    try:
        before = current_revision(engine)
        upgrade_database(engine)
        after = current_revision(engine)
    finally:
        engine.dispose()
    typer.echo(f"database schema: {before or 'empty'} -> {after}" if before != after else f"database schema already at {after}")


@db_app.command()
@one_line_errors
def current(db: DbOpt = None) -> None:
    """Print the schema version of the database and the one this siloguard needs."""
    from siloguard.storage.db import current_revision, head_revision

    engine = _engine(db)
    try:
        now = current_revision(engine)
    finally:
        engine.dispose()
    typer.echo(f"database: {now or 'empty'}; this siloguard needs: {head_revision()}")
