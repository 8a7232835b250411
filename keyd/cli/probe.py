"""``keyd probe KEY_ID [--json]``: probe one key now (docs/architecture.md §6).

Ignores the key's schedule, its backoff and an earlier rejection (the
operator's way to re-check a key after fixing it in ZITADEL). The outcome
is recorded like any scheduled probe. Exit codes: 0 ok, 5 rejected, 6
issuer unavailable (or the key file cannot be read right now), 7 bad
response; 4 for an unknown key id or a config without ``[issuer]``.
"""

from __future__ import annotations

from contextlib import ExitStack

import click

from keyd.actions.probe import build_probe_services, probe_due
from keyd.checks.probe import PROBE_SCHEMA, ProbeResult
from keyd.cli.common import app, echo_json
from keyd.cli.progress import terminal_progress
from keyd.clients.issuer import IssuerClient
from keyd.clients.vault import VaultClient
from keyd.config import VaultSourceConfig
from keyd.errors import (
    EXIT_BAD_RESPONSE,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    ConfigError,
)
from keyd.report.render import line
from keyd.store.engine import make_engine
from keyd.store.migrate import ensure_current
from keyd.timeutil import isoformat_z
from keyd.vocab import ProbeOutcome

EXIT_BY_OUTCOME: dict[str, int] = {
    ProbeOutcome.OK: EXIT_OK,
    ProbeOutcome.REJECTED: EXIT_REJECTED,
    ProbeOutcome.UNAVAILABLE: EXIT_UNAVAILABLE,
    ProbeOutcome.BAD_RESPONSE: EXIT_BAD_RESPONSE,
    ProbeOutcome.UNREADABLE: EXIT_UNAVAILABLE,
}


def render(result: ProbeResult) -> str:
    """One line, plus the diagnosis or error when there is one. Never secrets
    (the probe's messages are scrubbed)."""
    head = f"key {result.key_id} ({result.principal}): {result.outcome}"
    if result.diagnosis:
        head += f" ({result.diagnosis})"
    if result.latency_ms is not None and result.outcome != ProbeOutcome.UNREADABLE:
        head += f" in {result.latency_ms:.0f} ms, {result.attempts} attempt(s)"
    lines = [head]
    if result.message:
        lines.append(f"  {result.message}")
    if result.next_probe_at is not None:
        lines.append(f"  next probe: {isoformat_z(result.next_probe_at)}")
    return "\n".join(line(text) for text in lines)


@click.command("probe")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({PROBE_SCHEMA}).")
@click.option("--quiet", "-q", is_flag=True, help="No progress line on stderr.")
@click.pass_context
def probe_cmd(ctx: click.Context, key_id: str, as_json: bool, quiet: bool) -> int:
    """Probe KEY_ID now, ignoring its schedule, backoff and earlier rejection."""
    state = app(ctx)
    config = state.config()
    if config.issuer is None:
        raise ConfigError("issuer", "keyd probe needs an [issuer] section with url")
    with ExitStack() as stack:
        engine = make_engine(config.database.url, create=False)
        stack.callback(engine.dispose)
        ensure_current(engine)
        vault = None
        if config.vault is not None and any(isinstance(s, VaultSourceConfig) for s in config.sources):
            vault = stack.enter_context(VaultClient(config.vault, state.clock))
        client = stack.enter_context(IssuerClient.from_config(config.issuer, state.clock))
        services = build_probe_services(config, state.clock, client, vault)
        with terminal_progress(state.clock, quiet=quiet, as_json=as_json):
            report = probe_due(engine, services, state.clock.now(), force_key_id=key_id)
    [result] = report.results
    if as_json:
        echo_json(PROBE_SCHEMA, result.to_json())
    else:
        click.echo(render(result))
    return EXIT_BY_OUTCOME.get(result.outcome, EXIT_UNAVAILABLE)


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(probe_cmd)
