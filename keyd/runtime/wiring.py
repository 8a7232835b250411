"""Build (and close) everything a cycle needs, once, from the config.

``Services`` is the one bag of long-lived parts: config, clock, database
engine and the clients that exist for the configured features (``None``
when a feature is off). The daemon builds it at start and again on
SIGHUP; ``keyd check`` builds it for one cycle. ``close()`` releases every
part even when one of them fails to close.

``dry_run(services)`` is the same bag with the engine swapped for a
rolled-back sandbox (``keyd.store.sandbox``) for ``keyd check --dry-run``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from keyd.actions.probe import ProbeServices, build_probe_services
from keyd.actions.rotation_services import RotationServices, build_rotation_services
from keyd.actions.tokens import TokenServices, build_token_services
from keyd.checks.apitoken import key_api_for
from keyd.clients.issuer import IssuerClient
from keyd.clients.smtp import MailSender, SmtpClient
from keyd.clients.vault import POOL_SIZE as VAULT_POOL_SIZE
from keyd.clients.vault import VaultClient
from keyd.clients.webhook import WebhookClient
from keyd.clients.zitadel import ZitadelKeyAPI
from keyd.clock import Clock
from keyd.config import Config, ZitadelSourceConfig
from keyd.errors import ConfigError
from keyd.inventory.watched import WatchedScans
from keyd.report.metrics import KeydMetrics
from keyd.store.engine import make_engine
from keyd.store.sandbox import rollback_engine
from keyd.store.snapshot import Engine

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    clock: Clock
    engine: Engine
    vault: VaultClient | None = None
    issuer: IssuerClient | None = None
    smtp_factory: Callable[[], MailSender] | None = None
    webhook: WebhookClient | None = None
    metrics: KeydMetrics | None = None
    probe: ProbeServices | None = None  # with [issuer]
    tokens: TokenServices | None = None  # with [tokens], [issuer] and [vault]
    key_apis: dict[str, ZitadelKeyAPI] = field(default_factory=dict)  # zitadel sources, by name
    rotation: RotationServices | None = None  # with [rotation] enabled (and [issuer])
    watches: WatchedScans | None = None  # the daemon's directory watchers (its first scan tick)
    owned: bool = True  # False for dry-run copies: the original closes the parts
    owns_engine: bool = True  # False once a reloaded Services took the engine over

    def close(self) -> None:
        """Close every part; a failing close is logged, the rest still close."""
        if not self.owned:
            return
        parts: list[tuple[str, Callable[[], object]]] = []
        if self.watches is not None:
            parts.append(("directory watches", self.watches.close))
        if self.owns_engine:
            parts.append(("database", self.engine.dispose))
        if self.vault is not None:
            parts.append(("vault", self.vault.close))
        if self.issuer is not None:
            parts.append(("issuer", self.issuer.close))
        if self.webhook is not None:
            parts.append(("webhook", self.webhook.close))
        parts += [(f"source {name}", api.close) for name, api in self.key_apis.items()]
        if self.rotation is not None:
            parts.append(("ZITADEL key API", self.rotation.close))
        for name, close in parts:
            try:
                close()
            except Exception as exc:  # closing must not stop the others from closing
                log.warning("closing %s failed: %s", name, exc)


def build_services(config: Config, clock: Clock, *, engine: Engine | None = None) -> Services:
    """Make the parts for ``config``. No network I/O happens here: clients
    connect lazily, so a dead Vault does not stop the daemon starting.

    ``engine``: reuse this one (a reload keeps the database and its pool);
    it stays owned by the caller until it moves ``owns_engine`` over.
    A missing SQLite file is an error at first use (``DatabaseMissing``:
    run ``keyd db upgrade``), never created: ``keyd run``, ``keyd check``
    and the others all need the schema, which only ``keyd db upgrade``
    makes."""
    services = Services(
        config=config,
        clock=clock,
        owns_engine=engine is None,
        engine=engine if engine is not None else make_engine(config.database.url, create=False),
    )
    try:
        if config.vault is not None:
            # one keep-alive connection per write-back/probe worker, never fewer than the default
            workers = config.issuer.concurrency if config.issuer is not None else 1
            services.vault = VaultClient(config.vault, clock, max_connections=max(workers, VAULT_POOL_SIZE))
        if config.issuer is not None:
            services.issuer = IssuerClient.from_config(
                config.issuer, clock, max_connections=max(config.issuer.concurrency, 1)
            )
            services.probe = build_probe_services(config, clock, services.issuer, services.vault)
        rotation = config.rotation
        if rotation is not None and rotation.enabled and services.issuer is not None:
            assert services.probe is not None
            services.rotation = build_rotation_services(
                config, clock, services.issuer, services.probe, services.vault
            )
        if config.tokens is not None:  # ConfigError here if [issuer] or [vault] is missing
            if services.issuer is None or services.probe is None:
                raise ConfigError("tokens", "token write-back needs an [issuer] section")
            # one limiter: probes and write-back share the issuer's request budget
            services.tokens = build_token_services(
                config, clock, services.issuer, services.vault, limiter=services.probe.limiter
            )
        if services.issuer is not None:
            services.key_apis = zitadel_key_apis(config, services.issuer, clock)
        email = config.alerts.email
        if email is not None:
            services.smtp_factory = lambda: SmtpClient(email)
        if config.alerts.webhook is not None:
            services.webhook = WebhookClient(config.alerts.webhook)
    except BaseException:
        services.close()
        raise
    return services


def zitadel_key_apis(config: Config, issuer: IssuerClient, clock: Clock) -> dict[str, ZitadelKeyAPI]:
    """One key-API client per zitadel source (its own credential), by name.
    No network I/O: tokens are minted on the first call."""
    return {
        source.name: key_api_for(config, issuer, clock, credential=source.credential)
        for source in config.sources
        if isinstance(source, ZitadelSourceConfig)
    }


@contextmanager
def dry_run(services: Services) -> Iterator[Services]:
    """``services`` on a rolled-back sandbox engine (nothing is committed)."""
    with rollback_engine(services.engine) as sandbox:
        yield replace(services, engine=sandbox, owned=False)
