"""``keyd config check``: the config is valid (loading it proved that) and
every configured dependency answers: database (and its schema), Vault
(login), the issuer (discovery), SMTP (connect, TLS, auth; nothing sent)
and each directory source. Webhooks are not called (a POST is an alert).

Each check is independent; the result lists all of them, so one run shows
every problem instead of the first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from keyd.clients.smtp import SmtpClient
from keyd.config import DirectorySourceConfig
from keyd.errors import EXIT_OK, EXIT_UNAVAILABLE, KeydError
from keyd.runtime.wiring import Services
from keyd.store import snapshot
from keyd.store.engine import safe_url
from keyd.store.migrate import ensure_current
from keyd.urls import display_url

CONFIG_CHECK_SCHEMA: Final = "keyd.config-check/1"


@dataclass(frozen=True)
class DependencyCheck:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def check_dependencies(services: Services) -> list[DependencyCheck]:
    config = services.config
    checks: list[tuple[str, Callable[[], str]]] = [
        (f"database {safe_url(config.database.url)}", lambda: _database(services))
    ]
    if services.vault is not None:
        vault = services.vault
        checks.append((f"vault {display_url(vault.addr)}", lambda: _vault(services)))
    if services.issuer is not None:
        issuer = services.issuer
        checks.append(
            (
                f"issuer {display_url(issuer.url)}",
                lambda: f"token endpoint {issuer.discover().token_endpoint}",
            )
        )
    email = config.alerts.email
    if email is not None:
        checks.append((f"smtp {email.host}:{email.port}", lambda: _smtp(services)))
    if config.alerts.webhook is not None:
        checks.append(("webhook", lambda: "configured (not called: a POST would be an alert)"))
    for source in config.sources:
        if isinstance(source, DirectorySourceConfig):
            checks.append((f"source {source.name}", _directory(source)))
    return [_run(name, fn) for name, fn in checks]


def exit_code(results: list[DependencyCheck]) -> int:
    return EXIT_OK if all(r.ok for r in results) else EXIT_UNAVAILABLE


def _run(name: str, fn: Callable[[], str]) -> DependencyCheck:
    try:
        return DependencyCheck(name, True, fn())
    except KeydError as exc:
        return DependencyCheck(name, False, str(exc))
    except OSError as exc:
        return DependencyCheck(name, False, f"{type(exc).__name__}: {exc.strerror or exc}")


def _database(services: Services) -> str:
    if not snapshot.ping(services.engine):
        raise KeydError("cannot reach the database")
    ensure_current(services.engine)
    return "reachable, schema at head"


def _vault(services: Services) -> str:
    assert services.vault is not None
    services.vault.ensure_token()
    return "logged in"


def _smtp(services: Services) -> str:
    email = services.config.alerts.email
    assert email is not None
    client = SmtpClient(email)
    try:
        client.connect()
    finally:
        client.close()
    return f"connected ({email.security}{', authenticated' if email.username else ''})"


def _directory(source: DirectorySourceConfig) -> Callable[[], str]:
    def check() -> str:
        if not source.path.is_dir():
            raise KeydError(f"{source.path} is not a directory")
        if not os.access(source.path, os.R_OK | os.X_OK):
            raise KeydError(f"{source.path} is not readable by this user")
        return f"{source.path} readable"

    return check
