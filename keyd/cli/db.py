"""CLI commands: ``keyd db upgrade`` and ``keyd db current`` (docs/architecture.md §6).

The database URL is ``--url``, else ``$KEYD_DATABASE_URL``, else
``database.url`` from the config file. Each command prints one line naming
the database (password hidden) and its revision, e.g.
``database postgresql+psycopg://keyd@db/keyd: at 0001 (head)``.

Exit codes: 0 when the database is at head afterwards; ``keyd db current``
exits 4 (configuration) when the schema is missing, behind or ahead, so
scripts can gate a deployment on it; 6 when the database is unreachable.
"""

from __future__ import annotations

import click

from keyd.cli.common import app
from keyd.errors import EXIT_CONFIG, EXIT_OK
from keyd.store import migrate

URL_HELP = "Database URL [default: database.url from the config; env KEYD_DATABASE_URL]."


def _url(ctx: click.Context, url: str | None) -> str:
    return url if url else app(ctx).config().database.url


@click.group(name="db", help="Create and migrate keyd's database schema.")
def db_group() -> None:
    pass


@db_group.command(name="upgrade")
@click.option("--url", envvar="KEYD_DATABASE_URL", default=None, help=URL_HELP)
@click.option(
    "--revision", default="head", show_default=True, help="Target revision (for rehearsing migrations)."
)
@click.pass_context
def upgrade_cmd(ctx: click.Context, url: str | None, revision: str) -> int:
    """Migrate the database to this keyd's schema (safe to repeat)."""
    target = _url(ctx, url)
    migrate.upgrade(target, revision)
    click.echo(migrate.status(target).line())
    return EXIT_OK


@db_group.command(name="current")
@click.option("--url", envvar="KEYD_DATABASE_URL", default=None, help=URL_HELP)
@click.pass_context
def current_cmd(ctx: click.Context, url: str | None) -> int:
    """Show the database's schema revision; exit 4 unless it is at head."""
    target = _url(ctx, url)
    found = migrate.status(target)
    click.echo(found.line())
    return EXIT_OK if found.at_head else EXIT_CONFIG


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(db_group)
