"""RFC 7523 assertions that ZITADEL accepts (docs/zitadel.md §3).

Header ``{"alg", "kid": keyId}``; claims ``iss`` = ``sub`` = principal,
``aud`` = the issuer exactly as it names itself, ``iat`` back-dated by a
small skew, ``exp`` = ``iat`` + lifetime, and a fresh random ``jti``
(128 bits) in every assertion: ZITADEL ignores it, but OpenID Connect
Core §9 requires a unique ``jti`` in client assertions, and a strict
server rejects an application key without one as ``invalid_client``
(which keyd would call "revoked"). PyJWT builds and signs the JWS
(RS256, PS256, ES256 with raw ``r || s``); it is handed the private key
*object* from ``KeyFile.signing_key`` (loaded once per key content by
keyfile.py), never the PEM, so signing costs one RSA operation plus a few
microseconds of JSON (``bench/mint.py``: at least 0.9x raw signing).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyd.clock import Clock
from keyd.errors import UsageError
from keyd.redact import Secret
from keyd.sources.keyfile import KeyFile

MAX_IAT_AGE = timedelta(hours=1)  # the server refuses iat older than this
MIN_LIFETIME = timedelta(seconds=10)
SUPPORTED = {"RS256", "PS256", "ES256"}
# PyJWT's JWS layer, fed the claims already serialized by one reusable
# compact encoder: the JWT layer's per-call payload copy, datetime
# conversion and fresh JSONEncoder cost ~10 us per assertion, which is 4 %
# of an RSA-2048 signature, and keyd's claims are ints and strings already.
_JWS = jwt.PyJWS(algorithms=sorted(SUPPORTED))
_COMPACT = json.JSONEncoder(separators=(",", ":"))


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

    def __init__(
        self,
        clock: Clock,
        *,
        lifetime: timedelta = timedelta(minutes=5),
        skew: timedelta = timedelta(seconds=5),
    ) -> None:
        check_lifetime(lifetime, skew)
        if skew < timedelta(0) or skew > timedelta(minutes=5):
            raise UsageError("clock_skew", f"{skew} must be between 0 and 5 minutes")
        self._clock = clock
        self.lifetime = lifetime
        self.skew = skew

    def now(self) -> datetime:
        return self._clock.now()

    def claims(self, key: KeyFile, audience: str, lifetime: timedelta | None = None) -> dict[str, object]:
        lifetime = lifetime or self.lifetime
        check_lifetime(lifetime, self.skew)
        iat = int((self._clock.now() - self.skew).timestamp())
        return {
            "iss": key.principal,
            "sub": key.principal,
            "aud": audience,
            "iat": iat,
            "exp": iat + int(lifetime.total_seconds()),
            "jti": secrets.token_urlsafe(16),
        }

    def sign(
        self, key: KeyFile, audience: str, *, lifetime: timedelta | None = None, algorithm: str | None = None
    ) -> Secret:
        alg = algorithm or key.algorithm
        if alg not in SUPPORTED:
            raise UsageError("algorithm", f"{alg} is not supported (RS256, PS256, ES256)")
        private = key.signing_key.unwrap()
        if not _fits(private, alg):
            raise UsageError("algorithm", f"{alg} does not fit a {key.algorithm} key ({key.source})")
        payload = _COMPACT.encode(self.claims(key, audience, lifetime)).encode()
        token = _JWS.encode(payload, private, algorithm=alg, headers={"kid": key.key_id, "typ": "JWT"})
        return Secret(token)


def _fits(private: object, alg: str) -> bool:
    """RS256/PS256 need an RSA key, ES256 a P-256 key (PyJWT would say
    less clearly, in its own exception type)."""
    if alg == "ES256":
        return isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    return isinstance(private, rsa.RSAPrivateKey)
