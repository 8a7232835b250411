"""Turn the TOML tables into the frozen dataclasses of ``keyd.config.model``,
reading every key as its declaration says (docs/architecture.md §7, rule 4).

``build_section`` is generic: it refuses unknown keys, reads each declared
key with its kind and range, and runs its ``check``. What spans several
keys of one section (which secrets an auth method needs, the SMTP port's
default) lives in that section's finish hook in ``FINISH``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from keyd.config.model import (
    CRED_ZITADEL_API_KEY,
    SMTP_DEFAULT_PORTS,
    Config,
    DirectorySourceConfig,
    EmailConfig,
    HttpConfig,
    RotationConfig,
    SourceConfig,
    VaultConfig,
    VaultSourceConfig,
    ZitadelSourceConfig,
)
from keyd.config.read import Context, Table, apply_env_overrides, read_toml, resolve_secret, suggest
from keyd.config.schema import SCHEMA
from keyd.config.spec import Key, key_named, keys_of, source_type
from keyd.redact import Secret
from keyd.timeutil import get_zone
from keyd.urls import is_loopback_host

# Not overrides: the config path itself (docs/architecture.md §6).
ENV_NOT_OVERRIDES = ("KEYD_CONFIG",)

S = TypeVar("S")
Finish = Callable[[Table, dict[str, Any]], None]


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML), apply ``KEYD_<SECTION>_<KEY>`` overrides from
    ``env`` (default ``os.environ``), read credential files, validate.

    Returns one frozen ``Config``; raises ``ConfigError`` whose ``where``
    names the file and key (or the env var) and whose message says what
    to change. Secrets are read here and held as ``Secret``. Relative paths
    in the file are taken from the file's directory. See
    docs/configuration.md for every key.
    """
    env = os.environ if env is None else env
    raw = read_toml(path)
    ctx = Context(file=str(path), base_dir=path.parent.absolute(), env=env)
    apply_env_overrides(raw, ctx, SCHEMA, ignore=ENV_NOT_OVERRIDES)
    config = build_section(Config, Table(ctx, "", raw))
    return replace(config, path=path, warnings=tuple(ctx.warnings))


def build_section(cls: type[S], t: Table) -> S:
    """One section's dataclass from its table: only keys the operator wrote
    (or an env var set) override the declared defaults."""
    declared = keys_of(cls)
    t.check_keys(spec.toml for _, spec in declared)
    kw: dict[str, Any] = {}
    for name, spec in declared:
        value = read_value(t, spec)
        if value is not None:
            kw[name] = value
    finish = FINISH.get(cls)
    if finish is not None:
        finish(t, kw)
    return cls(**kw)


def read_value(t: Table, spec: Key) -> Any:
    """One key, typed and checked; ``None`` when absent (secrets are left
    to the finish hook: which one is needed depends on other keys)."""
    k = spec.toml
    value: Any
    if spec.kind == "str":
        value = t.choice(k, spec.choices) if spec.choices else t.string(k, nonempty=spec.nonempty)
    elif spec.kind == "int":
        value = t.integer(k, low=spec.low, high=spec.high)
    elif spec.kind == "float":
        value = t.number(k, positive=bool(spec.positive))
    elif spec.kind == "bool":
        value = t.boolean(k)
    elif spec.kind == "duration":
        value = t.duration(k, positive=spec.positive is not False, low=spec.low, high=spec.high)
    elif spec.kind == "path":
        value = t.path(k, must_exist=spec.must_exist)
    elif spec.kind == "list":
        items = t.string_list(k, nonempty=spec.nonempty)
        value = None if items is None else tuple(items)
    elif spec.kind == "table":
        sub = t.table(k)
        value = build_section(spec.section, sub) if sub is not None and spec.section else sub
    elif spec.kind == "tables":
        value = build_sources(t, k, spec.variants)
    else:  # "secret"
        return None
    if value is None and spec.required is not None:
        t.fail(k, spec.required)
    if value is not None and spec.check is not None:
        value = spec.check(t, k, value)
    return value


def secret(t: Table, cls: type, name: str) -> Secret | None:
    """The secret of field ``name``: its file, else its credential, else its
    environment variable, as declared."""
    spec = key_named(cls, name)
    assert spec.credential is not None
    return resolve_secret(t, spec.toml, spec.credential, spec.env_var)


# -- [[sources]] -------------------------------------------------------------


def build_sources(root: Table, key: str, kinds: tuple[type, ...]) -> tuple[SourceConfig, ...]:
    """``[[sources]]``: each table's ``type`` picks its dataclass; names are unique."""
    variants = {source_type(cls): cls for cls in kinds}
    sources: list[SourceConfig] = []
    seen: dict[str, str] = {}
    for t in root.tables(key):
        kind = t.need_string("type")
        if kind not in variants:
            t.fail("type", f'unknown source type "{kind}"; use "directory", "vault" or "zitadel"')
        source: SourceConfig = build_section(variants[kind], t)
        if source.name in seen:
            t.fail(
                "name" if "name" in t else None,
                f'source name "{source.name}" is already used by {seen[source.name]}; '
                "give each source a distinct name",
            )
        seen[source.name] = t.dotted
        sources.append(source)
    return tuple(sources)


def _finish_directory(t: Table, kw: dict[str, Any]) -> None:
    kw.setdefault("name", f"directory:{kw['path']}")


def _finish_zitadel_source(t: Table, kw: dict[str, Any]) -> None:
    """Organizations or users, not both, not neither."""
    orgs, users = kw.get("organizations", ()), kw.get("users", ())
    if bool(orgs) == bool(users):
        t.fail(
            "organizations" if orgs else None,
            "a zitadel source lists either organizations or users (a non-empty list of ids), not both",
        )
    kw.setdefault("name", "zitadel:" + ",".join(orgs or users))


def _finish_vault_source(t: Table, kw: dict[str, Any]) -> None:
    kw.setdefault("name", f"vault:{kw.get('mount', 'secret')}/{kw.get('prefix', '')}")


# -- sections with rules across keys -----------------------------------------------


def _finish_config(root: Table, kw: dict[str, Any]) -> None:
    """The zone from its name; sections that need another: Vault sources
    and write-back need [vault]; write-back needs [issuer] to mint tokens."""
    if "timezone_name" in kw:
        kw["timezone"] = get_zone(kw["timezone_name"])
    sources = kw.get("sources", ())
    if kw.get("vault") is None:
        for i, source in enumerate(sources):
            if isinstance(source, VaultSourceConfig):
                root.fail("sources", "a vault source needs a [vault] section (addr, auth)", i)
        if kw.get("tokens") is not None:
            root.fail("tokens", "token write-back needs a [vault] section (addr, auth)")
    kw["sources"] = sources = tuple(_zitadel_credential(root, kw, s, i) for i, s in enumerate(sources))
    tokens = kw.get("tokens")
    if tokens is not None and kw.get("issuer") is None:
        root.fail("tokens", "token write-back needs an [issuer] section to mint tokens")
    rotation = kw.get("rotation")
    if rotation is not None and rotation.enabled:
        if kw.get("issuer") is None:
            root.fail(
                "rotation",
                "rotation needs an [issuer] section (the key API's base URL, "
                "and new keys are proven by minting a token)",
            )
        if rotation.credential is None:
            root.fail(
                "rotation.credential",
                "rotation needs keyd's own service-user key file: "
                "set credential, or provide the systemd credential "
                f"{CRED_ZITADEL_API_KEY}",
            )
    names = [source.name for source in sources]
    for i, selector in enumerate(tokens.sources if tokens is not None else ()):
        # a plain word (no glob, no path) can only be a source name: catch typos
        if not any(c in selector for c in "*?[/") and selector not in names:
            root.fail(
                "tokens.sources",
                f'"{selector}" is not the name of a source'
                f"{suggest(selector, names)}; names: {', '.join(names) or 'none'}",
                i,
            )


def _zitadel_credential(root: Table, kw: dict[str, Any], source: SourceConfig, i: int) -> SourceConfig:
    """A zitadel source needs [issuer] and keyd's key file: its own, else
    rotation.credential, else the systemd credential."""
    if not isinstance(source, ZitadelSourceConfig):
        return source
    if kw.get("issuer") is None:
        root.fail("sources", "a zitadel source needs an [issuer] section (its url is ZITADEL's API)", i)
    rotation = kw.get("rotation")
    credential = (
        source.credential
        or (rotation.credential if rotation is not None else None)
        or credential_file(root, CRED_ZITADEL_API_KEY)
    )
    if credential is None:
        root.fail(
            "sources",
            "a zitadel source needs keyd's own key file: credential here, "
            "rotation.credential, or the systemd credential zitadel-api-key",
            i,
        )
    return replace(source, credential=credential)


def _finish_vault(t: Table, kw: dict[str, Any]) -> None:
    """The secrets of the chosen auth method; the other method's keys are refused."""
    auth = kw.setdefault("auth", "token")
    unused = ("role_id_file", "secret_id_file") if auth == "token" else ("token_file",)
    for k in unused:
        if k in t:
            t.fail(k, f'is not used with auth = "{auth}"; remove it or change auth')
    if auth == "token":
        kw["token"] = secret(t, VaultConfig, "token")
        if kw["token"] is None:
            cred = key_named(VaultConfig, "token").credential
            t.fail(
                "token_file",
                "no Vault token: set token_file, provide the systemd "
                f"credential {cred} ($CREDENTIALS_DIRECTORY) or VAULT_TOKEN",
            )
        return
    for name in ("role_id", "secret_id"):
        kw[name] = secret(t, VaultConfig, name)
        if kw[name] is None:
            spec = key_named(VaultConfig, name)
            t.fail(
                spec.toml,
                f"no AppRole {name}: set {spec.toml} or provide the systemd "
                f"credential {spec.credential} ($CREDENTIALS_DIRECTORY)",
            )


def _finish_email(t: Table, kw: dict[str, Any]) -> None:
    """The port's default follows ``security``; a username needs a password."""
    kw.setdefault("port", SMTP_DEFAULT_PORTS[kw.get("security", "starttls")])
    username = kw.get("username")
    password = secret(t, EmailConfig, "password")
    cred = key_named(EmailConfig, "password").credential
    if username is not None and password is None:
        t.fail(
            "password_file",
            "username is set but there is no password: set "
            f"password_file or provide the systemd credential {cred}",
        )
    if username is None and "password_file" in t:
        t.fail("password_file", "is set but username is not")
    if username is not None:
        kw["password"] = password


def _finish_rotation(t: Table, kw: dict[str, Any]) -> None:
    """``credential`` absent: the systemd credential, if provided."""
    if kw.get("credential") is None:
        kw["credential"] = credential_file(t, CRED_ZITADEL_API_KEY)


def credential_file(t: Table, name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/<name>`` when systemd provides it."""
    cred_dir = t.ctx.env.get("CREDENTIALS_DIRECTORY")
    path = Path(cred_dir) / name if cred_dir else None
    return path if path is not None and path.is_file() else None


MIN_HTTP_TOKEN = 16


def _finish_http(t: Table, kw: dict[str, Any]) -> None:
    """A token, when configured, guards every address; an address off
    loopback is refused without one (the page names keys and principals)."""
    token = secret(t, HttpConfig, "auth_token")
    cred = key_named(HttpConfig, "auth_token").credential
    if token is not None and len(token.reveal().strip()) < MIN_HTTP_TOKEN:
        t.fail(
            "auth_token_file",
            f"the token is shorter than {MIN_HTTP_TOKEN} characters; make one with `openssl rand -hex 32`",
        )
    listen = kw.get("listen")
    if listen is not None and token is None and not is_loopback_host(listen.rpartition(":")[0]):
        t.fail(
            "listen",
            f'"{listen}" is not a loopback address: set auth_token_file (or provide the '
            f"systemd credential {cred}) so the status page, its API and /metrics need a "
            "token, or listen on 127.0.0.1 / [::1]",
        )
    if listen is not None and token is not None and not is_loopback_host(listen.rpartition(":")[0]):
        public = "/metrics, " if kw.get("metrics_public") else ""
        t.ctx.warn(
            f'{t.where("listen")}: "{listen}" is not a loopback address: the token guards the '
            f"page and its API, but {public}/healthz and /readyz answer anyone who can reach "
            "it; firewall the port or listen on 127.0.0.1 behind a proxy"
        )
    if token is not None:
        kw["auth_token"] = Secret(token.reveal().strip())


FINISH: dict[type, Finish] = {
    RotationConfig: _finish_rotation,
    Config: _finish_config,
    DirectorySourceConfig: _finish_directory,
    VaultSourceConfig: _finish_vault_source,
    ZitadelSourceConfig: _finish_zitadel_source,
    VaultConfig: _finish_vault,
    EmailConfig: _finish_email,
    HttpConfig: _finish_http,
}
