"""RFC 7523 assertions that ZITADEL accepts (ZITADEL.md §3).

Header ``{"alg", "kid": keyId}``; claims ``iss`` = ``sub`` = principal,
``aud`` = the issuer exactly as it names itself, ``iat`` back-dated by a
small skew, ``exp`` = ``iat`` + lifetime. The private key object comes
from ``KeyFile.signing_key`` (loaded once per key content by keyfile.py),
so signing costs one RSA operation plus a few microseconds of JSON.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from keyd.clock import Clock
from keyd.errors import UsageError
from keyd.redact import Secret
from keyd.sources.keyfile import KeyFile

MAX_IAT_AGE = timedelta(hours=1)  # the server refuses iat older than this
MIN_LIFETIME = timedelta(seconds=10)
SUPPORTED = {"RS256", "PS256", "ES256"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def check_lifetime(lifetime: timedelta, skew: timedelta) -> None:
    """Refuse lifetimes ZITADEL would reject: an assertion used near its
    ``exp`` would carry an ``iat`` older than one hour."""
    if lifetime < MIN_LIFETIME:
        raise UsageError("--lifetime", f"{lifetime} is too short (at least {MIN_LIFETIME})")
    if lifetime + skew > MAX_IAT_AGE:
        raise UsageError(
            "--lifetime",
            f"{lifetime} plus the {int(skew.total_seconds())}s clock-skew allowance exceeds one "
            "hour; ZITADEL rejects assertions whose iat is more than 1 h old",
        )


class AssertionSigner:
    """Signs assertions; thread-safe (holds no mutable state)."""

    def __init__(self, clock: Clock, *, lifetime: timedelta = timedelta(minutes=5),
                 skew: timedelta = timedelta(seconds=5)) -> None:
        check_lifetime(lifetime, skew)
        if skew < timedelta(0) or skew > timedelta(minutes=5):
            raise UsageError("clock_skew", f"{skew} must be between 0 and 5 minutes")
        self._clock = clock
        self.lifetime = lifetime
        self.skew = skew

    def now(self) -> datetime:
        return self._clock.now()

    def claims(self, key: KeyFile, audience: str, lifetime: timedelta | None = None
               ) -> dict[str, object]:
        lifetime = lifetime or self.lifetime
        check_lifetime(lifetime, self.skew)
        iat = int((self._clock.now() - self.skew).timestamp())
        return {"iss": key.principal, "sub": key.principal, "aud": audience,
                "iat": iat, "exp": iat + int(lifetime.total_seconds())}

    def sign(self, key: KeyFile, audience: str, *, lifetime: timedelta | None = None,
             algorithm: str | None = None) -> Secret:
        alg = algorithm or key.algorithm
        if alg not in SUPPORTED:
            raise UsageError("algorithm", f"{alg} is not supported (RS256, PS256, ES256)")
        header = {"alg": alg, "kid": key.key_id, "typ": "JWT"}
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode()) + "."
            + _b64(json.dumps(self.claims(key, audience, lifetime), separators=(",", ":")).encode())
        ).encode("ascii")
        signature = _raw_sign(key, alg, signing_input)
        return Secret(signing_input.decode("ascii") + "." + _b64(signature))


def _raw_sign(key: KeyFile, alg: str, data: bytes) -> bytes:
    private = key.signing_key.unwrap()
    if isinstance(private, rsa.RSAPrivateKey):
        if alg == "RS256":
            return private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if alg == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return private.sign(data, pss, hashes.SHA256())
    elif isinstance(private, ec.EllipticCurvePrivateKey) and alg == "ES256":
        der = private.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    raise UsageError("algorithm", f"{alg} does not fit a {key.algorithm} key ({key.source})")
