"""Key files for inventory tests: real keys from ``cryptography``, cached
per process (RSA generation costs ~100 ms; tests need only a handful)."""

from __future__ import annotations

import functools
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@functools.cache
def rsa_pem(n: int = 0) -> str:
    """The ``n``-th RSA-2048 test key as PKCS#1 PEM (as ZITADEL writes it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@functools.cache
def ec_pem(n: int = 0) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


FAR = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT00:00:00Z")
"""The default expirationDate: midnight about 13 months from today, so keys
are healthy (outside every default alert threshold) whatever day the suite
runs; a fixed date was a time bomb (2027-01-01 turned keys to WARNING in
December 2026). None writes no expirationDate."""


def keyfile_doc(
    key_id: str,
    user_id: str = "user-1",
    *,
    pem: str | None = None,
    expires: datetime | str | None = FAR,
    kind: str = "serviceaccount",
) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": kind, "keyId": key_id, "key": pem or rsa_pem(0)}
    if kind == "serviceaccount":
        doc["userId"] = user_id
    else:
        doc["clientId"] = user_id
        doc["appId"] = "app-" + user_id
    if expires is not None:
        doc["expirationDate"] = (
            expires if isinstance(expires, str) else expires.isoformat().replace("+00:00", "Z")
        )
    return doc


def write_keyfile(
    path: Path, key_id: str, user_id: str = "user-1", *, mode: int = 0o600, **kwargs: Any
) -> Path:
    """Write a key file (parents created 0700) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(keyfile_doc(key_id, user_id, **kwargs)))
    os.chmod(path, mode)
    return path


PEM_MARKER = "PRIVATE KEY-----"
"""Grep for this in logs/DB dumps: it must never appear."""
