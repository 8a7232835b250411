"""``keyd scan`` and ``keyd status`` (docs/architecture.md §6).

``keyd scan``: one pass over every configured source into the database;
prints one summary line, e.g. ``3 sources, 42 keys (2 new, 1 changed,
1 missing, 1 invalid); source vault:secret/zitadel/keys failed: Vault is
sealed``. Exit 0, or 6 when any source could not be scanned (its keys are
left as they were). Refuses a database whose schema is behind (exit 4:
run ``keyd db upgrade``).

``keyd status [--at WHEN] [--json]``: the inventory as a table (or the
JSON schema documented in ``keyd.report.status``), evaluated at ``--at``
(RFC 3339, or a date meaning 00:00 at its start in the configured zone).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from keyd.cli.common import app, echo_json, parse_at
from keyd.cli.progress import terminal_progress
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.clients.zitadel import ZitadelKeyAPI
from keyd.config import Config, VaultSourceConfig, ZitadelSourceConfig
from keyd.errors import EXIT_OK, EXIT_UNAVAILABLE
from keyd.inventory.scan import scan_all
from keyd.report.render import line
from keyd.report.rotations import rotation_lines
from keyd.report.status import STATUS_SCHEMA, load_status, render_text, status_document
from keyd.runtime.wiring import zitadel_key_apis
from keyd.store.engine import make_engine
from keyd.store.inventory import Engine
from keyd.store.migrate import ensure_current
from keyd.store.rotations import unfinished
from keyd.vocab import KeyKind, KeyStatus


@contextmanager
def _database(config: Config) -> Iterator[Engine]:
    """The configured database, checked to be at this keyd's schema (never
    created here: that is ``keyd db upgrade``'s job)."""
    engine = make_engine(config.database.url, create=False)
    try:
        ensure_current(engine)
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _vault(ctx: click.Context, config: Config) -> Iterator[VaultClient | None]:
    """A Vault client only when a Vault source needs one."""
    wanted = any(isinstance(s, VaultSourceConfig) for s in config.sources)
    if not wanted or config.vault is None:
        yield None
        return
    with VaultClient(config.vault, app(ctx).clock) as client:
        yield client


@contextmanager
def _key_apis(ctx: click.Context, config: Config) -> Iterator[dict[str, ZitadelKeyAPI]]:
    """Key-API clients only when a zitadel source needs them."""
    if config.issuer is None or not any(isinstance(s, ZitadelSourceConfig) for s in config.sources):
        yield {}
        return
    clock = app(ctx).clock
    with IssuerClient.from_config(config.issuer, clock) as issuer:
        apis = zitadel_key_apis(config, issuer, clock)
        try:
            yield apis
        finally:
            for api in apis.values():
                api.close()


@click.command("scan")
@click.option("--quiet", "-q", is_flag=True, help="No progress line on stderr.")
@click.pass_context
def scan_cmd(ctx: click.Context, quiet: bool) -> int:
    """Scan every configured source into the inventory once."""
    config = app(ctx).config()
    clock = app(ctx).clock
    with (
        _database(config) as engine,
        _vault(ctx, config) as vault,
        _key_apis(ctx, config) as key_apis,
        terminal_progress(clock, quiet=quiet, as_json=False),
    ):
        report = scan_all(config, engine, clock, vault, key_apis=key_apis)
    click.echo(line(report.summary()))
    return EXIT_UNAVAILABLE if report.failed else EXIT_OK


@click.command("status")
@click.option(
    "--at",
    "at_text",
    metavar="WHEN",
    help="Evaluate expiry as of an RFC 3339 instant or a date (00:00 at its start "
    "in the configured time zone).",
)
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({STATUS_SCHEMA}).")
@click.pass_context
def status_cmd(ctx: click.Context, at_text: str | None, as_json: bool) -> int:
    """Show the inventory: keys, where they live, expiry, status, last probe."""
    config = app(ctx).config()
    at = parse_at(at_text, config.timezone, app(ctx).clock)
    with _database(config) as engine:
        report = load_status(engine, config, at)
        rotations = unfinished(engine)
    if as_json:
        echo_json(STATUS_SCHEMA, status_document(report))
        return EXIT_OK
    text = render_text(report)
    enabled = config.rotation is not None and config.rotation.enabled
    apps = [
        k.row.key_id
        for k in report.keys
        if k.row.kind == KeyKind.APPLICATION and k.row.status != KeyStatus.MISSING
    ]
    lines = rotation_lines(rotations, apps, at, enabled=enabled)
    if lines:
        text += "\n\n" + "\n".join(["Rotations:", *(f"  {line(entry)}" for entry in lines)])
    click.echo(text)
    return EXIT_OK


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(scan_cmd)
    group.add_command(status_cmd)
