"""Checks of single values beyond their kind and range, named by the key
declarations in ``keyd.config.model`` (``key(..., check=...)``).

Each takes ``(table, key, value)`` — the value already read with its
declared kind — and returns the value to store, or fails through
``table.fail`` so the error names file and key (docs/architecture.md rule 4).
"""

from __future__ import annotations

import re
import string
from datetime import timedelta
from pathlib import Path

from keyd.config.read import Table
from keyd.timeutil import get_zone
from keyd.urls import DATABASE_URL_EXAMPLES, check_issuer_url, judge_database_url

TOKEN_PATH_FIELDS = ("principal", "key_id")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LISTEN_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d+)$")


def zone(t: Table, key: str, name: str) -> str:
    try:
        get_zone(name)
    except ValueError as exc:
        t.fail(key, str(exc))
    return name


def database_url(t: Table, key: str, url: str) -> str:
    judged = judge_database_url(url)
    if judged is None:
        t.fail(key, f'"{url}" is not a database URL (e.g. {DATABASE_URL_EXAMPLES})')
    if judged.backend is None:
        t.fail(
            key, f'"{judged.scheme.lower()}" is not a database keyd supports (use {DATABASE_URL_EXAMPLES})'
        )
    if judged.has_password:
        t.fail(
            key,
            "must not contain a password (secrets never sit in the config); "
            "for PostgreSQL use a password file (PGPASSFILE or ~/.pgpass)",
        )
    return url


def service_url(t: Table, key: str, url: str) -> str:
    """An issuer, Vault or webhook URL: https, or http on loopback."""
    if any(c.isspace() for c in url):
        t.fail(key, f"{url!r} must not contain spaces")
    try:
        return check_issuer_url(url)
    except ValueError as exc:
        t.fail(key, str(exc))


def service_urls(t: Table, key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """A list of ``service_url``s (``issuer.allow_endpoints``)."""
    for i, url in enumerate(values):
        try:
            check_issuer_url(url)
        except ValueError as exc:
            t.fail(key, str(exc), i)
    return tuple(values)


def scopes(t: Table, key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """Scopes without spaces, deduplicated, ``openid`` first (docs/zitadel.md §4:
    openid is required)."""
    for i, scope in enumerate(values):
        if any(c.isspace() for c in scope):
            t.fail(key, f'"{scope}" must not contain spaces (list each scope separately)', i)
    if "openid" not in values:
        values = ("openid", *values)
    return tuple(dict.fromkeys(values))


def vault_path(t: Table, key: str, value: str) -> str:
    if value.startswith("/") or value.endswith("/"):
        t.fail(key, f'"{value}" must not start or end with "/"')
    return value


def token_template(t: Table, key: str, template: str) -> str:
    """Only ``{principal}`` and ``{key_id}``, plain, and at least one of them:
    without a placeholder every token would overwrite the same secret."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        t.fail(
            key,
            f'"{template}" is not a valid template ({exc}); use {{principal}} '
            "or {key_id}, and {{ }} for literal braces",
        )
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TOKEN_PATH_FIELDS or spec or conversion:
            t.fail(
                key, f'unknown placeholder "{{{name}}}" in "{template}"; allowed: {{principal}}, {{key_id}}'
            )
        names.append(name)
    if not names:
        t.fail(
            key,
            f'"{template}" has no placeholder, so every token would be written to '
            "the same secret; include {principal} or {key_id}",
        )
    if template.startswith("/"):
        t.fail(key, f'"{template}" must not start with "/" (it is relative to the mount)')
    segments = template.split("/")
    if any(s in ("", ".", "..") for s in segments) or any(c.isspace() for c in template):
        t.fail(
            key,
            f'"{template}" must be a plain relative path: no "..", ".", empty '
            "segments or spaces (it names a Vault secret and, with file_dir, a file)",
        )
    return template


def thresholds(t: Table, key: str, items: tuple[str, ...]) -> tuple[timedelta, ...]:
    """Durations, deduplicated, longest first."""
    deltas = {t.duration(key, index=i, value=v) for i, v in enumerate(items)}
    return tuple(sorted((d for d in deltas if d is not None), reverse=True))


def address(t: Table, key: str, value: str, index: int | None = None) -> str:
    local, at, domain = value.rstrip(">").rpartition("@")
    if not at or not local or not domain or any(c in value for c in "\r\n"):
        t.fail(key, f'"{value}" is not an e-mail address', index)
    return value


def addresses(t: Table, key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    for i, value in enumerate(values):
        address(t, key, value, i)
    return values


def routes(t: Table, key: str, table: Table) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Name (principal or source) → extra recipients."""
    out = []
    for name in table.data:
        values = table.string_list(name, nonempty=True)
        if values is None:
            table.fail(name, "is required (a list of e-mail addresses)")
        out.append((name, addresses(table, name, tuple(values))))
    return tuple(out)


def listen(t: Table, key: str, value: str) -> str:
    match = _LISTEN_RE.match(value)
    if not match:
        t.fail(key, f'"{value}" is not "host:port" (e.g. "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464")')
    if not 1 <= int(match.group(2)) <= 65535:
        t.fail(key, f'port {match.group(2)} in "{value}" is out of range (1 to 65535)')
    return value


def log_level(t: Table, key: str, value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        t.fail(key, f'"{value}" is not a log level ({", ".join(LOG_LEVELS)})')
    return value.upper()


def key_file_path(t: Table, key: str, path: Path) -> Path:
    """A key file is named, never inlined: the TOML holds no key material."""
    text = str(path)
    if "{" in text or "\n" in text or "PRIVATE KEY" in text:
        t.fail(
            key,
            "must be the path of a key file (or leave it out and provide the systemd "
            "credential), never the key itself",
        )
    if not path.is_file():
        t.fail(key, f"{path} does not exist or is not a file")
    return path


_ZITADEL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def zitadel_ids(t: Table, key: str, ids: tuple[str, ...]) -> tuple[str, ...]:
    for i, value in enumerate(ids):
        if not _ZITADEL_ID_RE.match(value):
            t.fail(key, f'"{value}" is not a ZITADEL id (digits, letters, _ or -)', i)
    return tuple(dict.fromkeys(ids))
