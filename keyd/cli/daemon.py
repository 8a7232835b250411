"""``keyd run``, ``keyd check [--dry-run] [--json]`` and ``keyd config check``.

``keyd check`` follows the Nagios plugin convention: exit 0 ok, 1 warning,
2 critical, 3 unknown; the first line is the summary with perfdata, the
rest is detail (``keyd.runtime.check`` documents the mapping). Any error
that stops the check itself (config, database) is reported as
``KEYD UNKNOWN - <why>`` with exit 3, as monitoring systems expect.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

import click

from keyd.cli.common import AppContext, app, echo_json
from keyd.cli.progress import terminal_progress
from keyd.config import DEFAULT_CONFIG_PATH, Config, load_config
from keyd.errors import EXIT_UNKNOWN, KeydError, internal_error_text
from keyd.report.render import line
from keyd.runtime import configcheck
from keyd.runtime.check import SCHEMA, run_check
from keyd.runtime.configcheck import CONFIG_CHECK_SCHEMA
from keyd.runtime.daemon import Daemon, DaemonSettings
from keyd.runtime.stages import cycle_stages, daemon_stages
from keyd.runtime.wiring import build_services
from keyd.store.migrate import ensure_current
from keyd.timeutil import isoformat_z

log = logging.getLogger(__name__)


def _config_path(ctx: AppContext) -> Path:
    return Path(ctx.config_path or os.environ.get("KEYD_CONFIG") or DEFAULT_CONFIG_PATH)


@click.command(name="run")
@click.pass_context
def run_cmd(ctx: click.Context) -> int:
    """Run the daemon (systemd Type=notify; SIGHUP reloads the config)."""
    a = app(ctx)
    path = _config_path(a)

    def load() -> Config:
        return load_config(path)

    daemon_cfg = load().daemon  # tick intervals are fixed for the life of the process
    settings = DaemonSettings(
        control_interval=daemon_cfg.control_interval.total_seconds(), intervals=daemon_cfg.intervals()
    )
    return Daemon(load, a.clock, daemon_stages, settings, log_level="DEBUG" if a.debug else None).run()


@click.command(name="check")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Change nothing: sources are read and alerts decided, then rolled back. "
    "Nothing is sent to the issuer (a probe mints a real token), mailed, "
    "posted to a webhook or written to Vault; those steps are listed "
    "instead, and the verdict uses the stored results of the last real probe.",
)
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({SCHEMA}).")
@click.option("--quiet", "-q", is_flag=True, help="No progress line on stderr.")
@click.pass_context
def check_cmd(ctx: click.Context, dry_run: bool, as_json: bool, quiet: bool) -> int:
    """One full cycle, then a monitoring verdict (exit 0 ok, 1 warning,
    2 critical, 3 unknown)."""
    a = app(ctx)
    try:
        services = build_services(a.config(), a.clock)
    except KeydError as exc:
        return _unknown(str(exc), as_json, a.clock.now())
    try:
        ensure_current(services.engine)
        with terminal_progress(a.clock, quiet=quiet, as_json=as_json):
            verdict = run_check(services, cycle_stages(services, dry_run=dry_run), dry_run=dry_run)
    except KeydError as exc:
        return _unknown(str(exc), as_json, a.clock.now())
    except Exception as exc:  # not keyd's own: one line, UNKNOWN (traceback with --debug)
        log.debug("keyd check: internal error", exc_info=True)
        return _unknown(internal_error_text(exc), as_json, a.clock.now())
    finally:
        services.close()
    if as_json:
        echo_json(SCHEMA, verdict.to_json())
    else:
        click.echo(verdict.summary())
        for line in verdict.details():
            click.echo(line)
    return verdict.exit_code


def _unknown(why: str, as_json: bool, at: datetime) -> int:
    summary = f"KEYD UNKNOWN - {why}"
    if as_json:
        echo_json(
            SCHEMA,
            {
                "status": "unknown",
                "exit_code": EXIT_UNKNOWN,
                "summary": summary,
                "at": isoformat_z(at),
                "error": why,
            },
        )
    else:
        click.echo(summary)
    return EXIT_UNKNOWN


@click.group(name="config", help="Inspect keyd's configuration.")
def config_group() -> None:
    pass


@config_group.command(name="check")
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({CONFIG_CHECK_SCHEMA}).")
@click.pass_context
def config_check_cmd(ctx: click.Context, as_json: bool) -> int:
    """Validate the config and reach every dependency (exit 0 all ok,
    4 invalid config, 6 a dependency is unreachable)."""
    config = app(ctx).config()  # ConfigError: exit 4 with file and key named
    services = build_services(config, app(ctx).clock)  # never creates the database
    try:
        results = configcheck.check_dependencies(services)
    finally:
        services.close()
    if as_json:
        echo_json(
            CONFIG_CHECK_SCHEMA,
            {
                "config": str(config.path),
                "at": isoformat_z(app(ctx).clock.now()),
                "warnings": list(config.warnings),
                "checks": [r.to_json() for r in results],
            },
        )
    else:
        click.echo(f"config {config.path}: valid")
        for warning in config.warnings:
            click.echo(line(f"  warning: {warning}"))
        for r in results:
            click.echo(line(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}"))
    return configcheck.exit_code(results)


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(run_cmd)
    group.add_command(check_cmd)
    group.add_command(config_group)
