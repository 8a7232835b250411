"""CLI commands: ``keyd alert test --to ADDR`` (docs/architecture.md §6).

Sends one test message through the configured SMTP server, so an operator
can prove the alert path before a key is about to expire. Success prints
``sent to ADDR via host:port (starttls)``; a failure is a ``MailError``
that names the stage (connect, tls, auth, send) and exits 6 through the
one error root in ``keyd.cli.main``. TLS trusts the system store
(``SSL_CERT_FILE`` is honoured for a private CA).
"""

from __future__ import annotations

import click

from keyd.cli.common import app
from keyd.clients.smtp import SmtpClient
from keyd.errors import ConfigError
from keyd.report.mail import render_test_message


@click.group("alert", help="E-mail alerts.")
def alert() -> None:
    pass


@alert.command("test", help="Send a test e-mail through the configured SMTP server.")
@click.option("--to", "to", multiple=True, required=True, metavar="ADDR", help="Recipient (repeatable).")
@click.pass_context
def alert_test(ctx: click.Context, to: tuple[str, ...]) -> int:
    ctx_app = app(ctx)
    config = ctx_app.config()
    email = config.alerts.email
    if email is None:
        where = f"{config.path}: " if config.path else ""
        raise ConfigError(
            f"{where}alerts.email", "is not configured: there is no SMTP server to send through"
        )
    with SmtpClient(email) as client:
        message = render_test_message(
            sender=email.from_addr, to=to, now=ctx_app.clock.now(), server=client.describe()
        )
        client.send(message, list(to))
        click.echo(f"sent to {', '.join(to)} via {client.describe()}")
    return 0


def register(group: click.Group) -> None:
    """Add this module's commands to the `keyd` group."""
    group.add_command(alert)
