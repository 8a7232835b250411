"""The frozen configuration, one dataclass per TOML table; every key is
declared here once, as its field (``keyd.config.spec.key``).

Field order is the order keys are read and checked in. A field declared
with plain ``=`` or ``field()`` is derived, not read from the file.
"""

from __future__ import annotations

from dataclasses import field
from datetime import UTC, timedelta, tzinfo
from pathlib import Path

from keyd.config import checks
from keyd.config.spec import key, section
from keyd.redact import Secret

DEFAULT_CONFIG_PATH = Path("/etc/keyd/keyd.toml")
DEFAULT_DB_URL = "sqlite:////var/lib/keyd/keyd.db"
SMTP_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}

# systemd credential names ($CREDENTIALS_DIRECTORY/<name>), docs/architecture.md §7.
CRED_VAULT_TOKEN = "vault-token"
CRED_VAULT_ROLE_ID = "vault-role-id"
CRED_VAULT_SECRET_ID = "vault-secret-id"
CRED_SMTP_PASSWORD = "smtp-password"
CRED_ZITADEL_API_KEY = "zitadel-api-key"  # keyd's own service-user key file
CRED_HTTP_TOKEN = "http-auth-token"

_SECOND = timedelta(seconds=1)
_WEEK = timedelta(days=7)


@section
class DatabaseConfig:
    url: str = key(
        "str",
        default=DEFAULT_DB_URL,
        check=checks.database_url,
        doc="SQLAlchemy URL of the inventory; never with a password",
    )


@section
class IssuerConfig:
    url: str = key(
        "str", required=True, check=checks.service_url, doc="ZITADEL's issuer, exactly as it names itself"
    )
    scopes: tuple[str, ...] = key(
        "list",
        default=("openid",),
        nonempty=False,
        check=checks.scopes,
        doc="scopes of probe token requests; openid always sent",
    )
    probe_interval: timedelta = key(
        "duration", default=timedelta(hours=6), doc="how often each key is test-minted"
    )
    ca_bundle: Path | None = key(
        "path", default=None, must_exist=True, doc="extra CA bundle for a private issuer"
    )
    timeout: timedelta = key("duration", default=timedelta(seconds=10), doc="total per request")
    # docs/zitadel.md §3: an assertion older than 1 h is refused, and exp must lie
    # more than 1 s ahead, so lifetimes outside 10 s .. 1 h cannot work.
    assertion_lifetime: timedelta = key(
        "duration",
        default=timedelta(minutes=5),
        low=timedelta(seconds=10),
        high=timedelta(hours=1),
        doc="exp - iat of the JWT-bearer assertion",
    )
    clock_skew: timedelta = key(
        "duration",
        default=timedelta(seconds=5),
        positive=False,
        low=timedelta(0),
        high=timedelta(minutes=5),
        doc="iat is back-dated by this",
    )
    allow_endpoints: tuple[str, ...] = key(
        "list",
        default=(),
        nonempty=False,
        check=checks.service_urls,
        doc="other origins discovery may name for the token and introspection endpoints",
    )
    concurrency: int = key("int", default=8, low=1, high=1024, doc="probes in flight at once")
    rate_limit: float = key("float", default=50.0, positive=True, doc="requests per second to this issuer")
    unavailable_alert_after: timedelta = key(
        "duration", default=timedelta(minutes=30), doc="alert when unreachable this long"
    )


def _after_publish() -> tuple[str, ...]:
    """``sources.after_publish`` (directory and vault sources alike)."""
    result: tuple[str, ...] = key(
        "list", default=(), nonempty=False, doc="argv run after a rotated key was written (no shell)"
    )
    return result


def _after_publish_timeout() -> timedelta:
    result: timedelta = key(
        "duration", default=timedelta(seconds=30), high=timedelta(hours=1), doc="after_publish is killed then"
    )
    return result


@section
class DirectorySourceConfig:
    name: str = key("str", doc='inventory name; default "directory:<path>"')
    path: Path = key("path", required="is required for a directory source", doc="directory holding key files")
    pattern: str = key("str", default="*.json", doc="glob of key files in path")
    watch: bool = key(
        "bool",
        default=True,
        doc="keyd run rescans only what inotify saw change; false: every scan tick in full",
    )
    after_publish: tuple[str, ...] = _after_publish()
    after_publish_timeout: timedelta = _after_publish_timeout()
    type: str = key("str", default="directory", doc="kind of source")


@section
class VaultSourceConfig:
    name: str = key("str", doc='inventory name; default "vault:<mount>/<prefix>"')
    mount: str = key("str", default="secret", check=checks.vault_path, doc="KV v2 mount")
    prefix: str = key(
        "str",
        default="",
        nonempty=False,
        check=checks.vault_path,
        doc="every secret under this path is a key file",
    )
    field: str = key("str", default="keyfile", doc="secret field holding the key-file JSON")
    after_publish: tuple[str, ...] = _after_publish()
    after_publish_timeout: timedelta = _after_publish_timeout()
    type: str = key("str", default="vault", doc="kind of source")


@section
class ZitadelSourceConfig:
    """Keys ZITADEL lists for service users (ListKeys, docs/zitadel.md §5):
    locations of kind ``zitadel``, metadata only."""

    name: str = key("str", doc='inventory name; default "zitadel:<organizations or users>"')
    organizations: tuple[str, ...] = key(
        "list", default=(), nonempty=False, check=checks.zitadel_ids, doc="organization ids to list"
    )
    users: tuple[str, ...] = key(
        "list", default=(), nonempty=False, check=checks.zitadel_ids, doc="service-user ids to list"
    )
    credential: Path | None = key(
        "path", default=None, check=checks.key_file_path, doc="own key file; default rotation.credential"
    )
    interval: timedelta = key(
        "duration", default=timedelta(hours=1), low=timedelta(minutes=1), doc="how often keyd run lists"
    )
    type: str = key("str", default="zitadel", doc="kind of source")


SourceConfig = DirectorySourceConfig | VaultSourceConfig | ZitadelSourceConfig
SOURCE_VARIANTS: tuple[type[SourceConfig], ...] = (
    DirectorySourceConfig,
    VaultSourceConfig,
    ZitadelSourceConfig,
)


@section
class VaultConfig:
    addr: str = key("str", required=True, check=checks.service_url, doc="Vault / OpenBao address")
    auth: str = key("str", default="token", choices=("token", "approle"), doc="how keyd logs in")
    token: Secret | None = key(
        "secret",
        default=None,
        toml="token_file",
        credential=CRED_VAULT_TOKEN,
        env_var="VAULT_TOKEN",
        doc="(token) file holding the Vault token",
    )
    role_id: Secret | None = key(
        "secret",
        default=None,
        toml="role_id_file",
        credential=CRED_VAULT_ROLE_ID,
        doc="(approle) file holding the role id",
    )
    secret_id: Secret | None = key(
        "secret",
        default=None,
        toml="secret_id_file",
        credential=CRED_VAULT_SECRET_ID,
        doc="(approle) file holding the secret id",
    )
    approle_mount: str = key(
        "str", default="approle", check=checks.vault_path, doc="mount of the AppRole auth method"
    )
    ca_bundle: Path | None = key(
        "path", default=None, must_exist=True, doc="CA bundle for Vault's certificate"
    )
    verify: bool = key("bool", default=True, doc="verify Vault's TLS certificate")
    timeout: timedelta = key("duration", default=timedelta(seconds=10), doc="total deadline per request")
    namespace: str | None = key("str", default=None, doc="Enterprise / OpenBao namespace")


@section
class TokensConfig:
    mount: str = key("str", default="secret", check=checks.vault_path, doc="KV v2 mount to write to")
    path: str = key(
        "str",
        default="zitadel/tokens/{principal}",
        check=checks.token_template,
        doc="secret path per token; placeholders {principal}, {key_id}",
    )
    file_dir: Path | None = key("path", default=None, doc="also write each token to a file here")
    principals: tuple[str, ...] = key(
        "list", default=(), nonempty=False, doc="only these service users; empty = all"
    )
    sources: tuple[str, ...] = key(
        "list", default=(), nonempty=False, doc="only keys of these sources (names or globs)"
    )
    adopt: bool = key("bool", default=False, doc="may take over a secret keyd did not make")
    scopes: tuple[str, ...] = key(
        "list",
        default=(),
        nonempty=False,
        check=checks.scopes,
        doc="scopes of written tokens; default issuer.scopes",
    )


@section
class EmailConfig:
    host: str = key("str", required=True, doc="SMTP server")
    from_addr: str = key("str", toml="from", required=True, check=checks.address, doc="sender address")
    to: tuple[str, ...] = key(
        "list",
        required="is required (a list of e-mail addresses)",
        check=checks.addresses,
        doc="recipients of every alert",
    )
    port: int = key("int", default=587, low=1, high=65535, doc="SMTP port; default by security")
    security: str = key(
        "str", default="starttls", choices=tuple(SMTP_DEFAULT_PORTS), doc="implicit TLS, STARTTLS or plain"
    )
    username: str | None = key("str", default=None, doc="SMTP login")
    password: Secret | None = key(
        "secret",
        default=None,
        toml="password_file",
        credential=CRED_SMTP_PASSWORD,
        doc="file holding the SMTP password (needs username)",
    )
    timeout: timedelta = key("duration", default=timedelta(seconds=30), doc="total deadline")
    routes: tuple[tuple[str, tuple[str, ...]], ...] = key(
        "table", default=(), check=checks.routes, doc="principal or source name -> extra recipients"
    )


@section
class WebhookConfig:
    url: str = key("str", required=True, check=checks.service_url, doc="where alerts are POSTed")
    timeout: timedelta = key("duration", default=timedelta(seconds=10), doc="total deadline of one POST")


@section
class AlertsConfig:
    thresholds: tuple[timedelta, ...] = key(
        "list",
        default=(
            timedelta(days=30),
            timedelta(days=14),
            timedelta(days=7),
            timedelta(days=3),
            timedelta(days=1),
        ),
        check=checks.thresholds,
        doc="alert when a key has this little time left",
    )
    digest: bool = key("bool", default=False, doc="one mail per run instead of per key")
    unheld_ladder: bool = key("bool", default=False, doc="run the expiry ladder for keys only ZITADEL knows")
    never_expiring: bool = key("bool", default=False, doc="flag keys ZITADEL lists that never expire")
    max_lifetime: timedelta | None = key(
        "duration", default=None, doc="flag keys ZITADEL lists that live longer"
    )
    max_keys_per_user: int | None = key(
        "int", default=None, low=1, high=10_000, doc="flag users with more live keys in ZITADEL"
    )
    email: EmailConfig | None = key("table", default=None, section=EmailConfig, doc="e-mail delivery")
    webhook: WebhookConfig | None = key("table", default=None, section=WebhookConfig, doc="webhook delivery")


@section
class RotationConfig:
    """Rotation through ZITADEL's key API, as keyd's own service user."""

    credential: Path | None = key(
        "path",
        default=None,
        check=checks.key_file_path,
        doc="key file of keyd's own service user for ZITADEL's API",
    )
    enabled: bool = key("bool", default=True, doc="rotate due keys; false: the credential only lists")
    before: timedelta = key(
        "duration", default=timedelta(days=30), doc="rotate when this much lifetime is left"
    )
    lifetime: timedelta = key(
        "duration",
        default=timedelta(days=90),
        low=timedelta(days=2),
        doc="validity of a new key; it expires at 00:00 at the start of a day in timezone",
    )
    overlap: timedelta = key(
        "duration",
        default=timedelta(days=7),
        positive=False,
        low=timedelta(0),
        doc="the old key stays registered this long after the new one is published",
    )
    retire: bool = key("bool", default=True, doc="remove the old key from ZITADEL after the overlap")
    algorithm: str = key(
        "str",
        default="rsa-2048",
        choices=("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256"),
        doc="key type of new keys",
    )
    principals: tuple[str, ...] = key(
        "list", default=(), nonempty=False, doc="only these service users; empty = all"
    )
    sources: tuple[str, ...] = key(
        "list", default=(), nonempty=False, doc="only keys of these sources (names or globs)"
    )
    rotate_never_expiring: timedelta | None = key(
        "duration", default=None, doc="rotate never/unknown-expiry keys this long after first seen"
    )
    recheck: timedelta = key(
        "duration",
        default=timedelta(minutes=1),
        low=_SECOND,
        high=timedelta(days=1),
        doc="how often a published rotation checks whether the old key may retire",
    )


@section
class HttpConfig:
    listen: str | None = key(
        "str",
        default=None,
        check=checks.listen,
        doc='"host:port" of the status page, /metrics and health; none = no server',
    )
    auth_token: Secret | None = key(
        "secret",
        default=None,
        toml="auth_token_file",
        credential=CRED_HTTP_TOKEN,
        doc="file holding the token every request needs; required off loopback",
    )
    metrics_public: bool = key("bool", default=False, doc="/metrics answers without the token")
    metrics_per_key: bool = key(
        "bool", default=False, doc="/metrics adds per-key probe, status and token series"
    )


def _tick(default: timedelta, doc: str) -> timedelta:
    result: timedelta = key("duration", default=default, low=_SECOND, high=_WEEK, doc=doc)
    return result


@section
class DaemonConfig:
    """How often ``keyd run`` looks for due work (the work itself is picked
    from due times in the database). Read at start; a change needs a restart."""

    scan_interval: timedelta = _tick(timedelta(minutes=5), "re-read every source")
    full_scan_interval: timedelta = _tick(
        timedelta(hours=1), "re-walk watched directory sources in full (the safety net for missed events)"
    )
    evaluate_interval: timedelta = _tick(timedelta(minutes=1), "decide alerts")
    probe_tick: timedelta = _tick(timedelta(seconds=30), "probe keys that are due")
    probe_slice: timedelta = key(
        "duration",
        default=timedelta(seconds=10),
        low=_SECOND,
        high=timedelta(minutes=10),
        doc="the longest one chunk of a probe round holds the work thread (at issuer.rate_limit)",
    )
    tokens_tick: timedelta = _tick(timedelta(seconds=30), "refresh tokens that are due")
    rotate_tick: timedelta = _tick(timedelta(seconds=30), "plan and advance key rotations")
    outbox_tick: timedelta = _tick(timedelta(seconds=30), "send pending deliveries")
    prune_interval: timedelta = _tick(timedelta(hours=6), "delete old probe history")
    control_interval: timedelta = _tick(timedelta(seconds=5), "leadership, watchdog")
    metrics_interval: timedelta = _tick(timedelta(seconds=15), "refresh the /metrics snapshot")

    def intervals(self) -> dict[str, float]:
        """Seconds per daemon tick, by stage name."""
        return {
            "scan": self.scan_interval.total_seconds(),
            "evaluate": self.evaluate_interval.total_seconds(),
            "probe": self.probe_tick.total_seconds(),
            "tokens": self.tokens_tick.total_seconds(),
            "rotate": self.rotate_tick.total_seconds(),
            "outbox": self.outbox_tick.total_seconds(),
            "prune": self.prune_interval.total_seconds(),
            "metrics": self.metrics_interval.total_seconds(),
        }


@section
class LogConfig:
    format: str = key(
        "str", default="text", choices=("text", "json"), doc="text (key=value) or json, one event per line"
    )
    level: str = key("str", default="INFO", check=checks.log_level, doc="case-insensitive")


@section
class Config:
    path: Path | None = None  # where it was loaded from (for messages)
    timezone_name: str = key(
        "str",
        default="UTC",
        toml="timezone",
        check=checks.zone,
        doc="IANA zone for bare dates and dates in e-mails",
    )
    timezone: tzinfo = UTC  # from timezone_name
    database: DatabaseConfig = key(
        "table", default_factory=DatabaseConfig, section=DatabaseConfig, doc="the inventory"
    )
    issuer: IssuerConfig | None = key("table", default=None, section=IssuerConfig, doc="absent = no probes")
    sources: tuple[SourceConfig, ...] = key(
        "tables", default=(), variants=SOURCE_VARIANTS, doc="where key files are read from"
    )
    vault: VaultConfig | None = key(
        "table", default=None, section=VaultConfig, doc="for vault sources and write-back"
    )
    tokens: TokensConfig | None = key(
        "table", default=None, section=TokensConfig, doc="token write-back; absent = off"
    )
    alerts: AlertsConfig = key(
        "table", default_factory=AlertsConfig, section=AlertsConfig, doc="thresholds and delivery"
    )
    rotation: RotationConfig | None = key(
        "table", default=None, section=RotationConfig, doc="ZITADEL key API access; absent = off"
    )
    http: HttpConfig = key(
        "table", default_factory=HttpConfig, section=HttpConfig, doc="metrics and health server"
    )
    daemon: DaemonConfig = key(
        "table", default_factory=DaemonConfig, section=DaemonConfig, doc="tick intervals of keyd run"
    )
    log: LogConfig = key("table", default_factory=LogConfig, section=LogConfig, doc="log format and level")
    # non-fatal findings while loading (e.g. an unknown KEYD_* variable), for `config check`
    warnings: tuple[str, ...] = field(default=())
