"""Key-file factories: ZITADEL's JSON key files (docs/zitadel.md §1) for tests.

RSA-2048 generation costs 50-100 ms, so RSA keys come from a module-level
pool: any ``POOL_SIZE`` consecutive calls get distinct keys (so fingerprints
differ within a test), later calls reuse them. Pass ``fresh=True`` for a key
never handed out before, or ``private_key=`` to put a given key in a file.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

NEVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # ZITADEL's "no expiry"
POOL_SIZE = 32
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_pool: list[rsa.RSAPrivateKey] = []
_pool_next = itertools.count()
_pool_lock = threading.Lock()


def rsa_key(*, fresh: bool = False) -> rsa.RSAPrivateKey:
    """An RSA-2048 private key from the pool (or a new one)."""
    if fresh:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with _pool_lock:
        index = next(_pool_next) % POOL_SIZE
        if index >= len(_pool):
            _pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _pool[index]


def zitadel_id() -> str:
    """An 18-digit id like ZITADEL's."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


def rfc3339(instant: datetime) -> str:
    """``2026-01-01T00:00:00Z`` (fraction only when there is one), as ZITADEL writes."""
    text = instant.astimezone(UTC).isoformat().removesuffix("+00:00")
    return text + "Z"


def private_pem(key: PrivateKey, *, pkcs8: bool = False) -> str:
    """PKCS#1 ``RSA PRIVATE KEY`` / SEC1 ``EC PRIVATE KEY`` by default, as ZITADEL."""
    fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode("ascii")


@dataclass(frozen=True)
class MadeKey:
    """What ``make_key_file`` made: the file (if written), its JSON, the key."""

    path: Path | None
    data: dict[str, Any]
    private_key: PrivateKey
    key_id: str
    principal: str  # userId, or clientId for application keys
    expires_at: datetime | None

    @property
    def text(self) -> str:
        return json.dumps(self.data, indent=2)


def make_key_file(
    tmp_path: Path | str | None = None,
    *,
    user_id: str | None = None,
    key_id: str | None = None,
    expires_at: datetime | None = NEVER,
    kind: str = "serviceaccount",
    alg: str = "RS256",
    pkcs8: bool = False,
    register_with: Any = None,
    private_key: PrivateKey | None = None,
    filename: str | None = None,
    client_id_field: str = "clientId",
    fresh: bool = False,
) -> MadeKey:
    """Make a key (RSA for RS256/PS256, P-256 for ES256) and its ZITADEL key file.

    ``expires_at=None`` omits ``expirationDate`` (pre-2024 files; the server
    then treats the key as never expiring). ``user_id`` is the clientId for
    ``kind="application"``. With ``tmp_path`` (a directory) the JSON is
    written to ``tmp_path/filename`` (default ``<keyId>.json``, mode 0600).
    ``register_with=server`` also registers the public key with an
    ``IssuerServer`` under the same principal, key id and expiry.
    """
    principal, key_id = user_id or zitadel_id(), key_id or zitadel_id()
    if private_key is None:
        private_key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa_key(fresh=fresh)
    data: dict[str, Any] = {"type": kind, "keyId": key_id, "key": private_pem(private_key, pkcs8=pkcs8)}
    if expires_at is not None:
        data["expirationDate"] = rfc3339(expires_at)
    if kind == "application":
        data.update({"appId": zitadel_id(), client_id_field: principal})
    else:
        data["userId"] = principal
    path = None
    if tmp_path is not None:
        path = Path(tmp_path) / (filename or f"{key_id}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
    if register_with is not None:
        register_with.add_key(principal, key_id, private_key.public_key(), expires_at, kind)
    return MadeKey(path, data, private_key, key_id, principal, expires_at)
