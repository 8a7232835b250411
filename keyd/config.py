"""Configuration: TOML + ``KEYD_*`` env + credential files → one frozen,
validated ``Config`` (STYLE.md rule 4, DESIGN.md §6).

Errors name the file and the key: ``keyd.toml: alerts.thresholds[2]: "7x"
is not a duration``. Secrets are read from files or systemd credentials
and held as ``Secret``; never from the TOML itself or the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, timedelta, tzinfo
from pathlib import Path

from keyd.redact import Secret

DEFAULT_CONFIG_PATH = Path("/etc/keyd/keyd.toml")
DEFAULT_DB_URL = "sqlite:////var/lib/keyd/keyd.db"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = DEFAULT_DB_URL


@dataclass(frozen=True)
class IssuerConfig:
    url: str
    scopes: tuple[str, ...] = ("openid",)  # openid is always sent
    probe_interval: timedelta = timedelta(hours=6)
    ca_bundle: Path | None = None
    timeout: timedelta = timedelta(seconds=10)
    assertion_lifetime: timedelta = timedelta(minutes=5)
    clock_skew: timedelta = timedelta(seconds=5)  # iat is back-dated by this
    concurrency: int = 8
    rate_limit: float = 50.0  # requests per second to this issuer
    unavailable_alert_after: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class DirectorySourceConfig:
    name: str  # "directory:<path>" unless given
    path: Path
    pattern: str = "*.json"
    type: str = "directory"


@dataclass(frozen=True)
class VaultSourceConfig:
    name: str  # "vault:<mount>/<prefix>" unless given
    mount: str = "secret"
    prefix: str = ""
    field: str = "keyfile"
    type: str = "vault"


SourceConfig = DirectorySourceConfig | VaultSourceConfig


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    auth: str = "token"  # token | approle
    token: Secret | None = None  # from token_file, $CREDENTIALS_DIRECTORY or VAULT_TOKEN
    role_id: Secret | None = None
    secret_id: Secret | None = None
    approle_mount: str = "approle"
    ca_bundle: Path | None = None
    verify: bool = True
    timeout: timedelta = timedelta(seconds=10)
    namespace: str | None = None


@dataclass(frozen=True)
class TokensConfig:
    mount: str = "secret"
    path: str = "zitadel/tokens/{principal}"  # placeholders: principal, key_id
    file_dir: Path | None = None
    principals: tuple[str, ...] = ()  # selectors; empty = all service users
    sources: tuple[str, ...] = ()  # source names or path globs; empty = all
    adopt: bool = False  # allow taking over a secret keyd does not manage
    scopes: tuple[str, ...] = ()  # extra scopes for written tokens (default: issuer.scopes)


@dataclass(frozen=True)
class EmailConfig:
    host: str
    from_addr: str
    to: tuple[str, ...]
    port: int = 587
    security: str = "starttls"  # ssl | starttls | none
    username: str | None = None
    password: Secret | None = None
    timeout: timedelta = timedelta(seconds=30)
    # routing: principal or source name -> extra recipients
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class AlertsConfig:
    thresholds: tuple[timedelta, ...] = (
        timedelta(days=30), timedelta(days=14), timedelta(days=7),
        timedelta(days=3), timedelta(days=1),
    )
    digest: bool = False
    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None


@dataclass(frozen=True)
class HttpConfig:
    listen: str | None = None  # "127.0.0.1:9464"; None = no HTTP server


@dataclass(frozen=True)
class DaemonConfig:
    """How often ``keyd run`` looks for due work (the work itself is picked
    from due times in the database). Read at start; a change needs a restart."""

    scan_interval: timedelta = timedelta(minutes=5)
    evaluate_interval: timedelta = timedelta(minutes=1)
    probe_tick: timedelta = timedelta(seconds=30)
    tokens_tick: timedelta = timedelta(seconds=30)
    outbox_tick: timedelta = timedelta(seconds=30)
    prune_interval: timedelta = timedelta(hours=6)
    control_interval: timedelta = timedelta(seconds=5)

    def intervals(self) -> dict[str, float]:
        """Seconds per daemon tick, by stage name."""
        return {"scan": self.scan_interval.total_seconds(),
                "evaluate": self.evaluate_interval.total_seconds(),
                "probe": self.probe_tick.total_seconds(),
                "tokens": self.tokens_tick.total_seconds(),
                "outbox": self.outbox_tick.total_seconds(),
                "prune": self.prune_interval.total_seconds()}


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"  # text (key=value) | json
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    path: Path | None = None  # where it was loaded from (for messages)
    timezone_name: str = "UTC"
    timezone: tzinfo = UTC
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    issuer: IssuerConfig | None = None
    sources: tuple[SourceConfig, ...] = ()
    vault: VaultConfig | None = None
    tokens: TokensConfig | None = None
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # non-fatal findings while loading (e.g. an unknown KEYD_* variable), for `config check`
    warnings: tuple[str, ...] = ()


# Not overrides: the config path itself (DESIGN.md §5).
ENV_NOT_OVERRIDES = ("KEYD_CONFIG",)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML), apply ``KEYD_<SECTION>_<KEY>`` overrides from
    ``env`` (default ``os.environ``), read credential files, validate.

    Returns one frozen ``Config``; raises ``ConfigError`` whose ``where``
    names the file and key (or the env var) and whose message says what
    to change. Secrets are read here and held as ``Secret``. Relative paths
    in the file are taken from the file's directory. See
    docs/configuration.md for every key.
    """
    # The loader lives in two helper modules to keep each one small; they
    # import the dataclasses above, hence the import here.
    from keyd.config_build import SCHEMA, build_config
    from keyd.config_read import Context, Table, apply_env_overrides, read_toml

    env = os.environ if env is None else env
    raw = read_toml(path)
    ctx = Context(file=str(path), base_dir=path.parent.absolute(), env=env)
    apply_env_overrides(raw, ctx, SCHEMA, ignore=ENV_NOT_OVERRIDES)
    config = build_config(Table(ctx, "", raw))
    return replace(config, path=path)
