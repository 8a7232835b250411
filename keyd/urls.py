"""Issuer URL rules shared by config and clients: https, except loopback."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


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
    ZITADEL compares ``aud`` to its own name byte for byte (ZITADEL.md §3).
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
