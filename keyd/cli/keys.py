"""Key-file commands that need no config: ``inspect``, ``jwt``, ``mint``.

``jwt`` and ``mint`` print a secret on purpose (that is their job); they
are the only commands that do, and they never log it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final

import click

from keyd.checks.assertion import AssertionSigner
from keyd.checks.expiry import DEFAULT_WARN_BEFORE, evaluate, time_left
from keyd.checks.mint import mint, prove_application_key
from keyd.cli.common import AppContext, app, echo_json, parse_at, parse_tz
from keyd.clients.issuer import IssuerClient
from keyd.errors import EXIT_CRITICAL, EXIT_OK, KeyFileError, UsageError
from keyd.report.render import line
from keyd.sources.keyfile import KeyFile, read_keyfile
from keyd.timeutil import isoformat_z, parse_duration, rfc3339_z
from keyd.vocab import KeyKind, LocationStatus

INSPECT_SCHEMA: Final = "keyd.inspect/1"
MINT_SCHEMA: Final = "keyd.mint/1"


def _duration(option: str, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(option, str(exc)) from None


def inspect_row(
    path: str, keyfile: KeyFile | None, error: KeyFileError | None, at: Any, tz: Any, warn_before: timedelta
) -> dict[str, Any]:
    """One ``--json`` object (documented schema in README, "keyd inspect")."""
    if keyfile is None:
        return {
            "path": path,
            "kind": None,
            "key_id": None,
            "principal": None,
            "algorithm": None,
            "key_size": None,
            "fingerprint": None,
            "expires_at": None,
            "expiry_status": LocationStatus.INVALID,
            "seconds_left": None,
            "last_usable_day": None,
            "error": error.problem if error else "unknown error",
        }
    view = evaluate(keyfile.expiry, at, tz, warn_before)
    return {
        "path": path,
        "kind": keyfile.kind,
        "key_id": keyfile.key_id,
        "principal": keyfile.principal,
        "algorithm": keyfile.algorithm,
        "key_size": keyfile.key_size,
        "fingerprint": keyfile.fingerprint,
        "expires_at": rfc3339_z(view.expires_at) if view.expires_at else None,
        "expiry_status": view.status,
        "seconds_left": view.seconds_left,
        "last_usable_day": view.last_usable_day.isoformat() if view.last_usable_day else None,
        "error": None,
    }


def _zone(ctx: AppContext, tz_name: str | None) -> tzinfo:
    """``--tz``, else the timezone of a config the operator named, else UTC
    (inspect needs no config, so the default path is never read)."""
    if tz_name is not None:
        return parse_tz(tz_name)
    if ctx.config_path or os.environ.get("KEYD_CONFIG"):
        return ctx.config().timezone
    return UTC


def _human(row: dict[str, Any]) -> str:
    if row["expiry_status"] == LocationStatus.INVALID:
        return line(f"{row['path']}: INVALID: {row['error']}")
    expiry = {"never": "never expires", "unknown": "expiry unknown (no expirationDate in file)"}.get(
        row["expiry_status"],
        f"expires {row['expires_at']} (last usable day {row['last_usable_day']}), "
        f"{_left(row['seconds_left'])}",
    )
    return (
        line(
            f"{row['path']}: {row['status'].upper()}: {row['kind']} key {row['key_id']} of "
            f"{row['principal']}, {row['algorithm']} {row['key_size']} bit, {expiry}"
        )
        + f"\n    fingerprint sha256:{row['fingerprint']}"
    )


def _left(seconds: int | None) -> str:
    if seconds is None:
        return ""
    if seconds <= 0:
        return f"expired {time_left(-seconds, 'short')} ago" if seconds <= -86400 else "expired"
    return f"{time_left(seconds, 'exact')} left"


@click.command("inspect")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option(
    "--at",
    "at_text",
    metavar="WHEN",
    help="Evaluate as of an RFC 3339 instant or a date (00:00 at its start in --tz).",
)
@click.option(
    "--tz",
    "tz_name",
    default=None,
    help="Time zone for bare dates and the last usable day [default: the config's "
    "timezone when --config/KEYD_CONFIG is given, else UTC].",
)
@click.option(
    "--warn-before", default="30d", show_default=True, help="Status 'expiring' within this time of expiry."
)
@click.option("--json", "as_json", is_flag=True, help=f"Machine-readable output ({INSPECT_SCHEMA}).")
@click.pass_context
def inspect_cmd(
    ctx: click.Context,
    files: Sequence[str],
    at_text: str | None,
    tz_name: str | None,
    warn_before: str,
    as_json: bool,
) -> int:
    """Parse key files and show how long each has left (no config needed).

    Exit 0 if every file is a usable key file, 2 if any is invalid.
    """
    tz = _zone(app(ctx), tz_name)
    at = parse_at(at_text, tz, app(ctx).clock)
    warn = _duration("--warn-before", warn_before) if warn_before else DEFAULT_WARN_BEFORE
    rows = []
    for path in files:
        try:
            keyfile, error = read_keyfile(path, tz=tz), None
        except KeyFileError as exc:
            keyfile, error = None, exc
        rows.append(inspect_row(path, keyfile, error, at, tz, warn))
    if as_json:
        echo_json(INSPECT_SCHEMA, {"at": isoformat_z(at), "keys": rows})
    else:
        for row in rows:
            click.echo(_human(row))
    return EXIT_CRITICAL if any(r["expiry_status"] == LocationStatus.INVALID for r in rows) else EXIT_OK


@click.command("jwt")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--audience", required=True, help="The issuer URL exactly as it names itself.")
@click.option("--lifetime", default="5m", show_default=True, help="Assertion lifetime (≤ 1h).")
@click.option("--skew", default="5s", show_default=True, help="Back-date iat by this much.")
@click.option(
    "--alg",
    "algorithm",
    type=click.Choice(["RS256", "PS256", "ES256"]),
    default=None,
    help="Signature algorithm [default: RS256 for RSA keys, ES256 for EC keys].",
)
@click.pass_context
def jwt_cmd(
    ctx: click.Context, file: str, audience: str, lifetime: str, skew: str, algorithm: str | None
) -> int:
    """Print a signed JWT-profile assertion (RFC 7523) for FILE."""
    keyfile = read_keyfile(file)
    signer = AssertionSigner(
        app(ctx).clock, lifetime=_duration("--lifetime", lifetime), skew=_duration("--skew", skew)
    )
    click.echo(signer.sign(keyfile, audience, algorithm=algorithm).reveal())
    return EXIT_OK


@click.command("mint")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--issuer", required=True, help="Issuer URL (https; http only on loopback).")
@click.option("--scope", "scopes", multiple=True, help="Extra scope (repeatable); openid is always sent.")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA bundle to verify the issuer's TLS certificate.",
)
@click.option("--timeout", default="10s", show_default=True, help="HTTP timeout.")
@click.option("--json", "as_json", is_flag=True, help=f"Print the token response as JSON ({MINT_SCHEMA}).")
@click.pass_context
def mint_cmd(
    ctx: click.Context,
    file: str,
    issuer: str,
    scopes: Sequence[str],
    ca_bundle: str | None,
    timeout: str,
    as_json: bool,
) -> int:
    """Discover the issuer, request a token with FILE, print it.

    Without --json only the access token is printed, so $(keyd mint …) works.
    Application keys are proven at the introspection endpoint instead (no
    token is issued to them); the command then prints nothing and exits 0.
    Exit 5 if the key is rejected, 6 if the issuer is unavailable, 7 if its
    answer is unusable.
    """
    clock = app(ctx).clock
    keyfile = read_keyfile(file)
    signer = AssertionSigner(clock)
    with IssuerClient(
        issuer,
        clock=clock,
        timeout=_duration("--timeout", timeout).total_seconds(),
        ca_bundle=Path(ca_bundle) if ca_bundle else None,
    ) as client:
        if keyfile.kind == KeyKind.APPLICATION:
            prove_application_key(keyfile, client, signer)
            click.echo(f"{file}: application key {keyfile.key_id} accepted by {issuer}", err=True)
            return EXIT_OK
        token = mint(keyfile, client, signer, scopes)
    if as_json:
        echo_json(
            MINT_SCHEMA,
            {
                "access_token": token.access_token.reveal(),
                "token_type": token.token_type,
                "expires_in": token.expires_in,
                "expires_at": isoformat_z(token.expires_at),
                "scope": token.scope,
            },
        )
    else:
        sys.stdout.write(token.access_token.reveal() + "\n")
    return EXIT_OK


def register(group: click.Group) -> None:
    group.add_command(inspect_cmd)
    group.add_command(jwt_cmd)
    group.add_command(mint_cmd)
