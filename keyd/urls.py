"""URL rules shared by config, store and clients: service URLs are https
except on loopback; ``judge_database_url`` is the one reading of a
database URL (which backend, whether it carries a password);
``display_url`` is the one way a configured URL is shown (messages, logs,
``keyd check`` output) or stored (the outbox's recipient column)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_DB_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+]*)://")
#: Database dialects keyd runs on, by the name before any ``+driver``.
DATABASE_BACKENDS = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
DATABASE_URL_EXAMPLES = '"sqlite:////var/lib/keyd/keyd.db" or "postgresql+psycopg://keyd@db/keyd"'


@dataclass(frozen=True)
class DatabaseURL:
    scheme: str  # as written: "postgresql+psycopg"
    dialect: str  # before any "+driver", lower case: "postgresql", "mysql"
    backend: str | None  # "sqlite" or "postgresql"; None: a database keyd does not run on
    has_password: bool  # user:password@ in the authority


def judge_database_url(url: str) -> DatabaseURL | None:
    """What ``url`` is, or None when it is not a URL at all (no ``scheme://``)."""
    match = _DB_SCHEME_RE.match(url)
    if match is None:
        return None
    scheme = match.group(1)
    dialect = scheme.split("+", 1)[0].lower()
    userinfo = url[match.end() :].split("/", 1)[0].rpartition("@")[0]
    return DatabaseURL(
        scheme=scheme, dialect=dialect, backend=DATABASE_BACKENDS.get(dialect), has_password=":" in userinfo
    )


def display_url(url: str) -> str:
    """``url`` with everything that may be a credential hidden:

    * a password in the userinfo becomes ``***`` (the user name stays);
    * a query string becomes ``?…`` and a fragment is dropped;
    * the path of an http(s) URL becomes ``/…``: webhook URLs (Slack, Teams,
      Discord) carry their secret there; other schemes keep the path (a
      database name, an SQLite file).

    ``https://hooks.example.org/…``, ``postgresql://keyd:***@db:5432/keyd``.
    Never raises; an unparsable URL is shown as ``<unparsable URL>``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme:
        return "<unparsable URL>"
    user = ""
    if parts.username is not None or parts.password is not None:
        user = (parts.username or "") + (":***" if parts.password is not None else "") + "@"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    authority = f"{user}{host}{f':{port}' if port is not None else ''}"
    path, query = parts.path, "?…" if parts.query else ""
    if parts.scheme.lower() in ("http", "https") and (path not in ("", "/") or query):
        path, query = "/…", ""
    slashes = "//" if parts.netloc or url.startswith(f"{parts.scheme}://") else ""
    return f"{parts.scheme}:{slashes}{authority}{path}{query}"


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_issuer_url(url: str) -> str:
    """Return ``url`` unchanged if acceptable, else raise ``ValueError``.

    https is required; http only on loopback (127.0.0.0/8, ::1, localhost),
    for tests and local setups. The URL is kept exactly as written because
    ZITADEL compares ``aud`` to its own name byte for byte (docs/zitadel.md §3).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        raise ValueError(f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError(f"{url!r} must use https (http is only allowed on loopback)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not have a query or fragment")
    if parts.username or parts.password:
        raise ValueError(f"{url!r} must not contain credentials")
    return url
