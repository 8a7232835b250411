"""The schema of ``keyd.toml`` and the builders that turn each section into
its frozen dataclass (DESIGN.md §6, STYLE.md rule 4).

``SCHEMA`` is the one list of keys: it drives the unknown-key check, the
``KEYD_<SECTION>_<KEY>`` overrides and a test that keeps
``docs/configuration.md`` and ``examples/keyd.toml`` complete.
"""

from __future__ import annotations

import re
import string
from datetime import timedelta
from typing import Any

from keyd.config import (
    AlertsConfig,
    Config,
    DaemonConfig,
    DatabaseConfig,
    DirectorySourceConfig,
    EmailConfig,
    HttpConfig,
    IssuerConfig,
    LogConfig,
    SourceConfig,
    TokensConfig,
    VaultConfig,
    VaultSourceConfig,
    WebhookConfig,
)
from keyd.config_read import Table, resolve_secret, suggest
from keyd.timeutil import get_zone
from keyd.urls import check_issuer_url

# section ("" = top level) -> key -> kind. Kinds in config_read.SCALAR_KINDS
# can be overridden from the environment; "list", "table" and "tables" cannot.
SCHEMA: dict[str, dict[str, str]] = {
    "": {"timezone": "str", "database": "table", "issuer": "table", "sources": "tables",
         "vault": "table", "tokens": "table", "alerts": "table", "http": "table",
         "daemon": "table", "log": "table"},
    "database": {"url": "str"},
    "issuer": {"url": "str", "scopes": "list", "probe_interval": "duration",
               "ca_bundle": "path", "timeout": "duration", "assertion_lifetime": "duration",
               "clock_skew": "duration", "concurrency": "int", "rate_limit": "float",
               "unavailable_alert_after": "duration"},
    "vault": {"addr": "str", "auth": "str", "token_file": "path", "role_id_file": "path",
              "secret_id_file": "path", "approle_mount": "str", "ca_bundle": "path",
              "verify": "bool", "timeout": "duration", "namespace": "str"},
    "tokens": {"mount": "str", "path": "str", "file_dir": "path", "principals": "list",
               "sources": "list", "adopt": "bool", "scopes": "list"},
    "alerts": {"thresholds": "list", "digest": "bool", "email": "table", "webhook": "table"},
    "alerts.email": {"host": "str", "port": "int", "security": "str", "username": "str",
                     "password_file": "path", "from": "str", "to": "list",
                     "timeout": "duration", "routes": "table"},
    "alerts.webhook": {"url": "str", "timeout": "duration"},
    "http": {"listen": "str"},
    "daemon": {"scan_interval": "duration", "evaluate_interval": "duration",
               "probe_tick": "duration", "tokens_tick": "duration", "outbox_tick": "duration",
               "prune_interval": "duration", "control_interval": "duration"},
    "log": {"format": "str", "level": "str"},
}
SOURCE_KEYS: dict[str, tuple[str, ...]] = {
    "directory": ("type", "name", "path", "pattern"),
    "vault": ("type", "name", "mount", "prefix", "field"),
}
# systemd credential names ($CREDENTIALS_DIRECTORY/<name>), DESIGN.md §6.
CRED_VAULT_TOKEN = "vault-token"
CRED_VAULT_ROLE_ID = "vault-role-id"
CRED_VAULT_SECRET_ID = "vault-secret-id"
CRED_SMTP_PASSWORD = "smtp-password"

TOKEN_PATH_FIELDS = ("principal", "key_id")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SMTP_DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}
_DB_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+]*://")
_LISTEN_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d+)$")


def _set(kw: dict[str, Any], name: str, value: object) -> None:
    """Only keys the operator wrote override the dataclass defaults."""
    if value is not None:
        kw[name] = value


def build_config(root: Table) -> Config:
    """The whole ``Config`` from the top-level table (overrides applied)."""
    root.check_keys(SCHEMA[""])
    kw: dict[str, Any] = {}
    zone_name = root.string("timezone")
    if zone_name is not None:
        try:
            kw["timezone"] = get_zone(zone_name)
        except ValueError as exc:
            root.fail("timezone", str(exc))
        kw["timezone_name"] = zone_name
    sections = {name: root.table(name) for name in
                ("database", "issuer", "vault", "tokens", "alerts", "http", "daemon", "log")}
    if (t := sections["database"]) is not None:
        kw["database"] = build_database(t)
    if (t := sections["issuer"]) is not None:
        kw["issuer"] = build_issuer(t)
    sources = build_sources(root)
    kw["sources"] = sources
    if (t := sections["vault"]) is not None:
        kw["vault"] = build_vault(t)
    if (t := sections["tokens"]) is not None:
        kw["tokens"] = build_tokens(t)
    if (t := sections["alerts"]) is not None:
        kw["alerts"] = build_alerts(t)
    if (t := sections["http"]) is not None:
        kw["http"] = build_http(t)
    if (t := sections["daemon"]) is not None:
        kw["daemon"] = build_daemon(t)
    if (t := sections["log"]) is not None:
        kw["log"] = build_log(t)
    _check_dependencies(root, kw)
    return Config(path=None, warnings=tuple(root.ctx.warnings), **kw)


def _check_dependencies(root: Table, kw: dict[str, Any]) -> None:
    """Sections that need another: Vault sources and write-back need [vault];
    write-back needs [issuer] to mint the tokens it writes."""
    if kw.get("vault") is None:
        for i, source in enumerate(kw["sources"]):
            if isinstance(source, VaultSourceConfig):
                root.fail("sources", "a vault source needs a [vault] section (addr, auth)", i)
        if kw.get("tokens") is not None:
            root.fail("tokens", "token write-back needs a [vault] section (addr, auth)")
    tokens = kw.get("tokens")
    if tokens is not None and kw.get("issuer") is None:
        root.fail("tokens", "token write-back needs an [issuer] section to mint tokens")
    names = [source.name for source in kw["sources"]]
    for i, selector in enumerate(tokens.sources if tokens is not None else ()):
        # a plain word (no glob, no path) can only be a source name: catch typos
        if not any(c in selector for c in "*?[/") and selector not in names:
            root.fail("tokens.sources", f'"{selector}" is not the name of a source'
                      f"{suggest(selector, names)}; names: {', '.join(names) or 'none'}", i)


def build_database(t: Table) -> DatabaseConfig:
    t.check_keys(SCHEMA["database"])
    url = t.string("url")
    if url is None:
        return DatabaseConfig()
    if not _DB_URL_RE.match(url):
        t.fail("url", f'"{url}" is not a database URL (e.g. "sqlite:////var/lib/keyd/keyd.db" '
               'or "postgresql+psycopg://keyd@db/keyd")')
    userinfo = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
    if ":" in userinfo:
        t.fail("url", "must not contain a password (secrets never sit in the config); "
               "for PostgreSQL use a password file (PGPASSFILE or ~/.pgpass)")
    return DatabaseConfig(url=url)


def _check_url(t: Table, key: str) -> str:
    url = t.need_string(key)
    if any(c.isspace() for c in url):
        t.fail(key, f"{url!r} must not contain spaces")
    try:
        return check_issuer_url(url)
    except ValueError as exc:
        t.fail(key, str(exc))


def _scopes(t: Table, key: str, *, add_openid: bool) -> tuple[str, ...] | None:
    scopes = t.string_list(key)
    if scopes is None:
        return None
    for i, scope in enumerate(scopes):
        if any(c.isspace() for c in scope):
            t.fail(key, f'"{scope}" must not contain spaces (list each scope separately)', i)
    if add_openid and "openid" not in scopes:
        scopes = ["openid", *scopes]  # ZITADEL.md §4: openid is required
    return tuple(dict.fromkeys(scopes))


def build_issuer(t: Table) -> IssuerConfig:
    t.check_keys(SCHEMA["issuer"])
    kw: dict[str, Any] = {"url": _check_url(t, "url")}
    _set(kw, "scopes", _scopes(t, "scopes", add_openid=True))
    _set(kw, "probe_interval", t.duration("probe_interval"))
    _set(kw, "ca_bundle", t.path("ca_bundle", must_exist=True))
    _set(kw, "timeout", t.duration("timeout"))
    # ZITADEL.md §3: an assertion older than 1 h is refused, and exp must lie
    # more than 1 s ahead, so lifetimes outside 10 s .. 1 h cannot work.
    _set(kw, "assertion_lifetime", t.duration(
        "assertion_lifetime", low=timedelta(seconds=10), high=timedelta(hours=1)))
    _set(kw, "clock_skew", t.duration("clock_skew", positive=False, low=timedelta(0),
                                      high=timedelta(minutes=5)))
    _set(kw, "concurrency", t.integer("concurrency", low=1, high=1024))
    _set(kw, "rate_limit", t.number("rate_limit", positive=True))
    _set(kw, "unavailable_alert_after", t.duration("unavailable_alert_after"))
    return IssuerConfig(**kw)


def build_sources(root: Table) -> tuple[SourceConfig, ...]:
    sources: list[SourceConfig] = []
    seen: dict[str, str] = {}
    for t in root.tables("sources"):
        kind = t.need_string("type")
        if kind not in SOURCE_KEYS:
            t.fail("type", f'unknown source type "{kind}"; use "directory" or "vault"')
        t.check_keys(SOURCE_KEYS[kind])
        source = _directory_source(t) if kind == "directory" else _vault_source(t)
        if source.name in seen:
            t.fail("name" if "name" in t else None,
                   f'source name "{source.name}" is already used by {seen[source.name]}; '
                   "give each source a distinct name")
        seen[source.name] = t.dotted
        sources.append(source)
    return tuple(sources)


def _directory_source(t: Table) -> DirectorySourceConfig:
    path = t.path("path")
    if path is None:
        t.fail("path", "is required for a directory source")
    kw: dict[str, Any] = {}
    _set(kw, "pattern", t.string("pattern"))
    name = t.string("name") or f"directory:{path}"
    return DirectorySourceConfig(name=name, path=path, **kw)


def _vault_source(t: Table) -> VaultSourceConfig:
    kw: dict[str, Any] = {}
    _set(kw, "mount", _vault_path(t, "mount"))
    prefix = t.string("prefix", nonempty=False)
    if prefix is not None and (prefix.startswith("/") or prefix.endswith("/")):
        t.fail("prefix", f'"{prefix}" must not start or end with "/"')
    _set(kw, "prefix", prefix)
    _set(kw, "field", t.string("field"))
    mount, prefix = kw.get("mount", "secret"), kw.get("prefix", "")
    name = t.string("name") or f"vault:{mount}/{prefix}"
    return VaultSourceConfig(name=name, **kw)


def _vault_path(t: Table, key: str) -> str | None:
    value = t.string(key)
    if value is not None and (value.startswith("/") or value.endswith("/")):
        t.fail(key, f'"{value}" must not start or end with "/"')
    return value


def build_vault(t: Table) -> VaultConfig:
    t.check_keys(SCHEMA["vault"])
    kw: dict[str, Any] = {"addr": _check_url(t, "addr")}
    auth = t.choice("auth", ("token", "approle")) or "token"
    kw["auth"] = auth
    unused = ("role_id_file", "secret_id_file") if auth == "token" else ("token_file",)
    for key in unused:
        if key in t:
            t.fail(key, f'is not used with auth = "{auth}"; remove it or change auth')
    if auth == "token":
        kw["token"] = resolve_secret(t, "token_file", CRED_VAULT_TOKEN, "VAULT_TOKEN")
        if kw["token"] is None:
            t.fail("token_file", "no Vault token: set token_file, provide the systemd "
                   f"credential {CRED_VAULT_TOKEN} ($CREDENTIALS_DIRECTORY) or VAULT_TOKEN")
    else:
        for key, cred, field in (("role_id_file", CRED_VAULT_ROLE_ID, "role_id"),
                                 ("secret_id_file", CRED_VAULT_SECRET_ID, "secret_id")):
            kw[field] = resolve_secret(t, key, cred)
            if kw[field] is None:
                t.fail(key, f"no AppRole {field}: set {key} or provide the systemd "
                       f"credential {cred} ($CREDENTIALS_DIRECTORY)")
    _set(kw, "approle_mount", _vault_path(t, "approle_mount"))
    _set(kw, "ca_bundle", t.path("ca_bundle", must_exist=True))
    _set(kw, "verify", t.boolean("verify"))
    _set(kw, "timeout", t.duration("timeout"))
    _set(kw, "namespace", t.string("namespace"))
    return VaultConfig(**kw)


def build_tokens(t: Table) -> TokensConfig:
    t.check_keys(SCHEMA["tokens"])
    kw: dict[str, Any] = {}
    _set(kw, "mount", _vault_path(t, "mount"))
    path = t.string("path")
    if path is not None:
        _check_template(t, "path", path)
        kw["path"] = path
    _set(kw, "file_dir", t.path("file_dir"))
    for key in ("principals", "sources"):
        values = t.string_list(key)
        _set(kw, key, tuple(values) if values is not None else None)
    _set(kw, "adopt", t.boolean("adopt"))
    _set(kw, "scopes", _scopes(t, "scopes", add_openid=True))
    return TokensConfig(**kw)


def _check_template(t: Table, key: str, template: str) -> None:
    """Only ``{principal}`` and ``{key_id}``, plain, and at least one of them:
    without a placeholder every token would overwrite the same secret."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        t.fail(key, f'"{template}" is not a valid template ({exc}); use {{principal}} '
               "or {key_id}, and {{ }} for literal braces")
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TOKEN_PATH_FIELDS or spec or conversion:
            t.fail(key, f'unknown placeholder "{{{name}}}" in "{template}"; '
                   "allowed: {principal}, {key_id}")
        names.append(name)
    if not names:
        t.fail(key, f'"{template}" has no placeholder, so every token would be written to '
               "the same secret; include {principal} or {key_id}")
    if template.startswith("/"):
        t.fail(key, f'"{template}" must not start with "/" (it is relative to the mount)')


def build_alerts(t: Table) -> AlertsConfig:
    t.check_keys(SCHEMA["alerts"])
    kw: dict[str, Any] = {}
    items = t.string_list("thresholds", nonempty=True)
    if items is not None:
        deltas = {t.duration("thresholds", index=i, value=v) for i, v in enumerate(items)}
        kw["thresholds"] = tuple(sorted((d for d in deltas if d is not None), reverse=True))
    _set(kw, "digest", t.boolean("digest"))
    if (email := t.table("email")) is not None:
        kw["email"] = build_email(email)
    if (hook := t.table("webhook")) is not None:
        hook.check_keys(SCHEMA["alerts.webhook"])
        hook_kw: dict[str, Any] = {"url": _check_url(hook, "url")}
        _set(hook_kw, "timeout", hook.duration("timeout"))
        kw["webhook"] = WebhookConfig(**hook_kw)
    return AlertsConfig(**kw)


def _addresses(t: Table, key: str) -> tuple[str, ...]:
    values = t.string_list(key, nonempty=True)
    if values is None:
        t.fail(key, "is required (a list of e-mail addresses)")
    for i, value in enumerate(values):
        _check_address(t, key, value, i)
    return tuple(values)


def _check_address(t: Table, key: str, value: str, index: int | None = None) -> None:
    local, at, domain = value.rstrip(">").rpartition("@")
    if not at or not local or not domain or any(c in value for c in "\r\n"):
        t.fail(key, f'"{value}" is not an e-mail address', index)


def build_email(t: Table) -> EmailConfig:
    t.check_keys(SCHEMA["alerts.email"])
    security = t.choice("security", tuple(SMTP_DEFAULT_PORTS)) or "starttls"
    sender = t.need_string("from")
    _check_address(t, "from", sender)
    kw: dict[str, Any] = {"host": t.need_string("host"), "from_addr": sender,
                          "to": _addresses(t, "to"), "security": security,
                          "port": t.integer("port", low=1, high=65535)
                          or SMTP_DEFAULT_PORTS[security]}
    username = t.string("username")
    password = resolve_secret(t, "password_file", CRED_SMTP_PASSWORD)
    if username is not None and password is None:
        t.fail("password_file", "username is set but there is no password: set "
               f"password_file or provide the systemd credential {CRED_SMTP_PASSWORD}")
    if username is None and "password_file" in t:
        t.fail("password_file", "is set but username is not")
    if username is not None:
        kw.update(username=username, password=password)
    _set(kw, "timeout", t.duration("timeout"))
    if (routes := t.table("routes")) is not None:
        kw["routes"] = tuple((name, _addresses(routes, name)) for name in routes.data)
    return EmailConfig(**kw)


def build_http(t: Table) -> HttpConfig:
    t.check_keys(SCHEMA["http"])
    listen = t.string("listen")
    if listen is None:
        return HttpConfig()
    match = _LISTEN_RE.match(listen)
    if not match:
        t.fail("listen", f'"{listen}" is not "host:port" (e.g. "127.0.0.1:9464", '
               '"[::1]:9464", "0.0.0.0:9464")')
    if not 1 <= int(match.group(2)) <= 65535:
        t.fail("listen", f'port {match.group(2)} in "{listen}" is out of range (1 to 65535)')
    return HttpConfig(listen=listen)


def build_daemon(t: Table) -> DaemonConfig:
    t.check_keys(SCHEMA["daemon"])
    kw: dict[str, Any] = {}
    for name in SCHEMA["daemon"]:
        _set(kw, name, t.duration(name, low=timedelta(seconds=1), high=timedelta(days=7)))
    return DaemonConfig(**kw)


def build_log(t: Table) -> LogConfig:
    t.check_keys(SCHEMA["log"])
    kw: dict[str, Any] = {}
    _set(kw, "format", t.choice("format", ("text", "json")))
    level = t.string("level")
    if level is not None:
        if level.upper() not in LOG_LEVELS:
            t.fail("level", f'"{level}" is not a log level ({", ".join(LOG_LEVELS)})')
        kw["level"] = level.upper()
    return LogConfig(**kw)
