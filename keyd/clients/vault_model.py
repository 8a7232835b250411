"""Value objects and pure helpers of the Vault client (no I/O, no hvac).

Split from ``vault.py`` to keep that module about talking to the server;
import the public names from ``keyd.clients.vault``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import requests

from keyd.config import VaultConfig
from keyd.errors import ConfigError, VaultUnavailable
from keyd.timeutil import parse_rfc3339

V = TypeVar("V")

MAX_LIST_DEPTH = 32  # folders below the prefix
MAX_LIST_ENTRIES = 100_000  # secrets under one prefix

TOKEN_HELP = "supply a new token through vault.token_file, the vault-token credential or VAULT_TOKEN"


@dataclass(frozen=True)
class VaultSecret:
    """The current version of a KV v2 secret. ``data`` is secret: not in repr."""

    data: dict[str, Any] = field(repr=False)
    version: int
    custom_metadata: dict[str, str]


@dataclass(frozen=True)
class VaultMetadata:
    """KV v2 metadata. ``deleted``: the current version is destroyed, or
    soft-deleted at an instant already past by keyd's clock (or there is no
    version), so the secret is absent. ``deletion_pending``: a deletion time
    is set but not yet past by keyd's clock (``delete_version_after``, or
    clock skew): a reader must look instead of trusting the version."""

    current_version: int
    custom_metadata: dict[str, str]
    deleted: bool = False
    deletion_pending: bool = False


@dataclass(frozen=True)
class VaultHealth:
    initialized: bool
    sealed: bool
    standby: bool
    version: str


def check_auth_config(cfg: VaultConfig) -> None:
    """Refuse a config that cannot authenticate, naming the keys to set."""
    if cfg.auth == "token":
        if not cfg.token:
            raise ConfigError("vault.token", f'auth = "token" but no token was found: {TOKEN_HELP}')
    elif cfg.auth == "approle":
        if not cfg.role_id or not cfg.secret_id:
            raise ConfigError(
                "vault.auth",
                'auth = "approle" needs vault.role_id_file and '
                "vault.secret_id_file (or the vault-role-id and "
                "vault-secret-id credentials)",
            )
    else:
        raise ConfigError("vault.auth", f'{cfg.auth[:40]!r} is not "token" or "approle"')


def metadata_from(body: Mapping[str, Any], now: datetime) -> VaultMetadata:
    """Metadata from a KV v2 metadata body (or a detailed-metadata key_info
    entry), judged at ``now``."""
    current = int(num(body.get("current_version")))
    versions = body.get("versions")
    entry = versions.get(str(current)) if isinstance(versions, dict) else None
    deleted, pending = current <= 0, False
    if isinstance(entry, dict):
        stamp = entry.get("deletion_time")
        if entry.get("destroyed") is True:
            deleted = True
        elif isinstance(stamp, str) and stamp:
            try:
                deleted = parse_rfc3339(stamp) <= now
            except ValueError:
                deleted = False
            pending = not deleted
    return VaultMetadata(
        current_version=current,
        custom_metadata=str_map(body.get("custom_metadata")),
        deleted=deleted,
        deletion_pending=pending,
    )


def walk_tree(mount: str, prefix: str, list_folder: Callable[[str], Iterable[tuple[str, V]]]) -> dict[str, V]:
    """Every secret under ``prefix``: ``list_folder(folder)`` gives (key,
    value) pairs where keys ending in ``/`` are subfolders. A tree too deep
    or too large raises ``VaultUnavailable`` rather than returning part of
    it: a partial listing would make the rest look deleted."""
    found: dict[str, V] = {}
    stack = [(prefix, 0)]
    while stack:
        folder, depth = stack.pop()
        for key, value in list_folder(folder):
            path = f"{folder}/{key}" if folder else key
            if not key.endswith("/"):
                found[path] = value
            elif depth >= MAX_LIST_DEPTH:
                raise VaultUnavailable(
                    f"{vault_ref(mount, path)} is nested more than "
                    f"{MAX_LIST_DEPTH} folders deep; keyd does not scan it",
                    path=vault_ref(mount, prefix),
                )
            else:
                stack.append((path.rstrip("/"), depth + 1))
            if len(found) > MAX_LIST_ENTRIES:
                raise VaultUnavailable(
                    f"more than {MAX_LIST_ENTRIES} secrets under "
                    f"{vault_ref(mount, prefix)}; use a narrower prefix",
                    path=vault_ref(mount, prefix),
                )
    return found


def secret_from(resp: object, where: str) -> VaultSecret | None:
    """A KV v2 read answer (None: absent) → ``VaultSecret``."""
    if resp is None:
        return None
    body = resp.get("data") if isinstance(resp, dict) else None
    if not isinstance(body, dict):
        raise VaultUnavailable(f"Vault answered an unexpected read of {where}", path=where)
    data, meta = body.get("data"), body.get("metadata")
    if not isinstance(data, dict) or not isinstance(meta, dict):
        return None
    return VaultSecret(
        data=data, version=int(num(meta.get("version"))), custom_metadata=str_map(meta.get("custom_metadata"))
    )


def health_from(body: object, addr: str) -> VaultHealth:
    if not isinstance(body, dict):
        raise VaultUnavailable(f"Vault at {addr} answered sys/health with no status")
    return VaultHealth(
        initialized=bool(body.get("initialized")),
        sealed=bool(body.get("sealed")),
        standby=bool(body.get("standby")),
        version=str(body.get("version", "")),
    )


def transport_problem(exc: BaseException, timeout: timedelta) -> str:
    """Words for a transport failure, never the exception's own text (it
    can hold URLs and bodies)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS verification failed (set vault.ca_bundle to the CA that signed its certificate)"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no complete answer within {timeout.total_seconds():g}s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed (is it running and reachable?)"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"request failed ({type(exc).__name__})"
    return f"unexpected answer ({type(exc).__name__})"


def num(value: object) -> float:
    """A number from a JSON field that may be missing, a string or junk (→ 0)."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def list_keys(resp: object) -> list[str]:
    """``data.keys`` of a LIST answer; folders keep their trailing ``/``."""
    data = resp.get("data") if isinstance(resp, dict) else None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        return []
    return [k for k in keys if isinstance(k, str) and k.strip("/")]


def str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def norm_prefix(prefix: str) -> str:
    """``/a//b/`` → ``a/b`` (Vault paths have no empty segments)."""
    return "/".join(part for part in prefix.split("/") if part)


def vault_ref(mount: str, path: str) -> str:
    """``<mount>/<path>``: how keyd names a Vault location everywhere."""
    mount = mount.strip("/")
    return f"{mount}/{path}" if path else mount


def url_path(path: str) -> str:
    return quote(path, safe="/")


RENEW_FLOOR = 30.0  # seconds: renew when fewer remain (capped at half the TTL)


class TokenTimer:
    """When keyd's token dies and when to renew it (pure; times from a Clock).

    Renew when less than a third of the granted TTL is left, or less than
    ``RENEW_FLOOR`` (but never more than half the TTL, so a 3 s test token
    is not renewed on every call). A TTL of 0 means the token never expires.
    """

    def __init__(self) -> None:
        self.expires_at: datetime | None = None
        self.grant = 0.0  # TTL the token was issued or last renewed with
        self.renewable = False
        self.exhausted = False  # renewal refused, or capped by max TTL
        self.warned = False

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def set(self, ttl: float, grant: float, renewable: bool, now: datetime) -> None:
        self.grant = max(grant, ttl)
        self.renewable = renewable
        self.expires_at = (now + timedelta(seconds=ttl)) if ttl > 0 else None

    def remaining(self, now: datetime) -> float:
        if self.expires_at is None:
            return float("inf")
        return (self.expires_at - now).total_seconds()

    def threshold(self) -> float:
        return max(self.grant / 3.0, min(RENEW_FLOOR, self.grant / 2.0))

    def due(self, now: datetime) -> bool:
        return self.remaining(now) <= self.threshold()
