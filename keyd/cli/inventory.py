"""``keyd scan`` and ``keyd status`` (docs/architecture.md §6).

``keyd scan``: one pass over every configured source into the database;
prints one summary line, e.g. ``3 sources, 42 keys (2 new, 1 changed,
1 missing, 1 invalid); source vault:secret/zitadel/keys failed: Vault is
sealed``. Exit 0, or 6 when any source could not be scanned (its keys are
left as they were). Refuses a database whose schema is behind (exit 4:
run ``keyd db upgrade``).

``keyd status [--at WHEN] [--json] [--all]``: the inventory as a table (or
the JSON schema documented in ``keyd.report.status``), evaluated at
``--at`` (RFC 3339, or a date meaning 00:00 at its start in the configured
zone). Beyond ``LIST_ALL_UP_TO`` keys the table lists only the keys that
need attention, then counts by status and expiry window (bounded reads,
``keyd.store.page``); ``--all`` lists every key, ``--json`` always has
every key.
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
from keyd.report.status import (
    STATUS_SCHEMA,
    load_attention,
    load_status,
    page_problems,
    render_text,
    status_document,
    summary_lines,
    unrotated_application_keys,
)
from keyd.runtime.wiring import zitadel_key_apis
from keyd.store import page as page_store
from keyd.store import snapshot
from keyd.store.engine import make_engine
from keyd.store.inventory import Engine
from keyd.store.migrate import ensure_current
from keyd.store.rotations import unfinished

#: ``keyd status`` lists every key up to this many; beyond, the keys that
#: need attention and counts (``--all``: every key; ``--json``: always every key).
LIST_ALL_UP_TO = 100
PROBLEM_LIMIT = 200  # invalid / warned locations listed at most (and how many more)


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
@click.option(
    "--json", "as_json", is_flag=True, help=f"Machine-readable output ({STATUS_SCHEMA}), every key."
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help=f"List every key (the default beyond {LIST_ALL_UP_TO} keys: those that need attention, and counts).",
)
@click.pass_context
def status_cmd(ctx: click.Context, at_text: str | None, as_json: bool, show_all: bool) -> int:
    """Show the inventory: keys, where they live, expiry, status, last probe."""
    config = app(ctx).config()
    at = parse_at(at_text, config.timezone, app(ctx).clock)
    with _database(config) as engine:
        rotations = unfinished(engine)
        counts = page_store.status_counts(engine)
        if as_json or show_all or sum(counts.values()) <= LIST_ALL_UP_TO:
            report = load_status(engine, config, at)
            text = render_text(report)
            apps = unrotated_application_keys(report)
            app_total = len(apps)
        else:  # a big inventory: what needs attention in full, the rest as counts
            report = load_attention(engine, config, at)
            windows = page_store.expiry_windows(engine, at, config.alerts.thresholds, counts)
            locations = page_store.location_problems(engine, PROBLEM_LIMIT)
            text = render_text(
                report,
                summary_lines(counts, windows, len(report.keys)),
                page_problems([k.row for k in report.keys], locations, snapshot.sources(engine)),
            )
            apps, app_total = page_store.application_keys(engine)
    if as_json:
        echo_json(STATUS_SCHEMA, status_document(report, rotations))
        return EXIT_OK
    enabled = config.rotation is not None and config.rotation.enabled
    lines = rotation_lines(rotations, apps, at, enabled=enabled, application_total=app_total)
    if lines:
        text += "\n\n" + "\n".join(["Rotations:", *(f"  {line(entry)}" for entry in lines)])
    click.echo(text)
    return EXIT_OK


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(scan_cmd)
    group.add_command(status_cmd)
