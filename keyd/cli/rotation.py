"""``keyd rotate KEY_ID [--dry-run] [--json]`` and ``keyd rotations [--json]``
(README "Rotation").

``keyd rotate`` scans the sources (so it replaces what is there now), then
starts the rotation of KEY_ID now — ignoring ``rotation.before`` and the
filters — or continues an open or failed one. ``--dry-run`` says what it
would do and calls nothing that changes ZITADEL, a file or Vault (nothing
is written to the database either). A real run then sends the alerts that
are due (the rotation's own "rotated" / "failed" / "blocked" mail among
them), as ``keyd check`` does, so an operator's rotation is announced now,
not at the daemon's next outbox tick or the next timer run. Exit codes: 0 done or under way
(published, waiting for the overlap), 2 failed, 6 a transient failure
(retried by the daemon), 4 a key keyd cannot rotate.

``keyd rotations`` lists every rotation with its state and history.
"""

from __future__ import annotations

import json
from typing import Any

import click

from keyd.actions.rotate import plan_rotations, rotate_key
from keyd.checks.rotation import RotationPolicy
from keyd.cli.common import app, echo_json
from keyd.errors import EXIT_CRITICAL, EXIT_OK, EXIT_UNAVAILABLE, ConfigError
from keyd.inventory.scan import scan_all
from keyd.runtime.stages import outbox
from keyd.runtime.wiring import build_services, dry_run
from keyd.store import rotations as store
from keyd.store.engine import make_engine
from keyd.store.migrate import ensure_current
from keyd.store.rotations import RotationRow
from keyd.timeutil import isoformat_z
from keyd.vocab import RotationState

ROTATE_SCHEMA = "keyd.rotate/1"
ROTATIONS_SCHEMA = "keyd.rotations/1"


def row_json(row: RotationRow) -> dict[str, Any]:
    """One rotation for ``--json`` (no key material exists to leak)."""
    out: dict[str, Any] = {}
    for name in (
        "old_key_id",
        "principal",
        "state",
        "reason",
        "algorithm",
        "attempt",
        "new_key_id",
        "failed_step",
        "last_error",
    ):
        out[name] = getattr(row, name)
    for name in (
        "old_expires_at",
        "new_expires_at",
        "planned_at",
        "registered_at",
        "proven_at",
        "published_at",
        "hook_done_at",
        "retire_after",
        "finished_at",
        "updated_at",
        "next_attempt_at",
    ):
        value = getattr(row, name)
        out[name] = isoformat_z(value) if value is not None else None
    out["locations"] = [t.ref for t in row.target_stamps()]
    return out


def render(row: RotationRow) -> str:
    head = f"key {row.old_key_id} ({row.principal}): {row.state}"
    if row.new_key_id:
        head += f" → key {row.new_key_id}"
    if row.new_expires_at:
        head += f" (expires {isoformat_z(row.new_expires_at)})"
    lines = [head]
    if row.state == RotationState.FAILED:
        lines.append(f"  failed at {row.failed_step}: {row.last_error}")
    elif row.last_error:
        lines.append(f"  {row.last_error}")
    elif row.retire_after and row.state == RotationState.PUBLISHED:
        lines.append(f"  old key retired from {isoformat_z(row.retire_after)}")
    return "\n".join(lines)


@click.command("rotate")
@click.argument("key_id")
@click.option("--dry-run", "dry", is_flag=True, help="Say what would be done; change nothing.")
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({ROTATE_SCHEMA}).")
@click.pass_context
def rotate_cmd(ctx: click.Context, key_id: str, dry: bool, as_json: bool) -> int:
    """Rotate KEY_ID now (ignoring rotation.before), or continue its rotation."""
    state = app(ctx)
    config = state.config()
    if config.rotation is None or config.issuer is None:
        raise ConfigError("rotation", "keyd rotate needs a [rotation] section and [issuer]")
    services = build_services(config, state.clock)
    try:
        ensure_current(services.engine)
        if dry:
            with dry_run(services) as sandbox:
                scan_all(config, sandbox.engine, state.clock, sandbox.vault)
                policy = (
                    services.rotation.policy
                    if services.rotation
                    else RotationPolicy.from_config(config.rotation, config.timezone)
                )
                lines = plan_rotations(sandbox.engine, policy, state.clock.now(), key_id=key_id)
            if as_json:
                echo_json(ROTATE_SCHEMA, {"dry_run": True, "would": lines})
            else:
                click.echo("\n".join(lines))
            return EXIT_OK
        if services.rotation is None:
            raise ConfigError("rotation.enabled", "rotation is disabled (enabled = false)")
        scan_all(config, services.engine, state.clock, services.vault)
        row = rotate_key(services.engine, services.rotation, key_id)
        mail = outbox(services)
    finally:
        services.close()
    if as_json:
        alerts = {"sent": mail.sent, "failed": mail.failed, "errors": mail.errors}
        echo_json(ROTATE_SCHEMA, {"dry_run": False, "rotation": row_json(row), "alerts": alerts})
    else:
        click.echo(render(row))
        for error in mail.errors:
            click.echo(f"  alert not sent (retried by keyd run / keyd check): {error}", err=True)
    if row.state == RotationState.FAILED:
        return EXIT_CRITICAL
    return (
        EXIT_UNAVAILABLE
        if row.failures and row.last_error and row.state != RotationState.PUBLISHED
        else EXIT_OK
    )


@click.command("rotations")
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({ROTATIONS_SCHEMA}).")
@click.pass_context
def rotations_cmd(ctx: click.Context, as_json: bool) -> int:
    """Every rotation: state, new key, and its history."""
    config = app(ctx).config()
    engine = make_engine(config.database.url, create=False)
    try:
        ensure_current(engine)
        rows = store.all_rotations(engine)
        history = {row.old_key_id: store.history(engine, row.old_key_id) for row in rows}
    finally:
        engine.dispose()
    if as_json:
        echo_json(
            ROTATIONS_SCHEMA,
            {
                "rotations": [
                    {
                        **row_json(row),
                        "history": [
                            {
                                "at": isoformat_z(at),
                                "event": kind.removeprefix("rotation."),
                                "detail": json.loads(detail) if detail else None,
                            }
                            for at, kind, detail in history[row.old_key_id]
                        ],
                    }
                    for row in rows
                ]
            },
        )
        return EXIT_OK
    if not rows:
        click.echo("no rotations yet")
    for row in rows:
        click.echo(render(row))
        for at, kind, _detail in history[row.old_key_id]:
            click.echo(f"    {isoformat_z(at)}  {kind.removeprefix('rotation.')}")
    return EXIT_OK


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(rotate_cmd)
    group.add_command(rotations_cmd)
