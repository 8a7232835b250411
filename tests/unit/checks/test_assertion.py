"""Assertions ZITADEL accepts (docs/zitadel.md §3), checked with PyJWT."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyd.checks.assertion import AssertionSigner
from keyd.checks.mint import diagnose
from keyd.clock import FakeClock
from keyd.errors import UsageError
from keyd.sources.keyfile import parse_keyfile

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
AUD = "https://acme.zitadel.cloud"


def keyfile(private: Any, **extra: Any) -> Any:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    doc = {
        "type": "serviceaccount",
        "keyId": "kid-1",
        "key": pem,
        "userId": "user-1",
        "expirationDate": "2027-01-01T00:00:00Z",
        **extra,
    }
    return parse_keyfile(json.dumps(doc), source="k.json")


RSA = rsa.generate_private_key(65537, 2048)
EC = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(("private", "alg"), [(RSA, "RS256"), (RSA, "PS256"), (EC, "ES256")])
def test_claims_and_header(private: Any, alg: str) -> None:
    signer = AssertionSigner(FakeClock(NOW), lifetime=timedelta(minutes=5), skew=timedelta(seconds=5))
    token = signer.sign(keyfile(private), AUD, algorithm=alg if alg == "PS256" else None)
    assert "eyJ" not in repr(token)
    raw = token.reveal()
    assert jwt.get_unverified_header(raw) == {"alg": alg, "kid": "kid-1", "typ": "JWT"}
    claims = jwt.decode(
        raw,
        private.public_key(),
        algorithms=[alg],
        audience=AUD,
        options={"verify_exp": False, "verify_iat": False},
    )
    iat = int(NOW.timestamp()) - 5
    jti = claims.pop("jti")
    assert claims == {"iss": "user-1", "sub": "user-1", "aud": AUD, "iat": iat, "exp": iat + 300}
    assert isinstance(jti, str) and len(jti) >= 22  # 128 random bits, url-safe


def test_every_assertion_has_its_own_jti() -> None:
    """OpenID Connect Core §9: same key, same instant, different jti."""
    signer = AssertionSigner(FakeClock(NOW))
    key = keyfile(RSA)
    ids = {
        jwt.decode(signer.sign(key, AUD).reveal(), options={"verify_signature": False})["jti"]
        for _ in range(50)
    }
    assert len(ids) == 50


def test_lifetimes_zitadel_would_reject_are_refused() -> None:
    with pytest.raises(UsageError, match="one hour"):
        AssertionSigner(FakeClock(NOW), lifetime=timedelta(hours=1))
    AssertionSigner(FakeClock(NOW), lifetime=timedelta(minutes=59), skew=timedelta(seconds=5))
    with pytest.raises(UsageError, match="too short"):
        AssertionSigner(FakeClock(NOW), lifetime=timedelta(seconds=1))


@pytest.mark.parametrize(("private", "alg"), [(EC, "RS256"), (EC, "PS256"), (RSA, "ES256")])
def test_a_key_signs_only_its_own_algorithms(private: Any, alg: str) -> None:
    # Refused with keyd's own error before PyJWT sees the key.
    with pytest.raises(UsageError, match="does not fit"):
        AssertionSigner(FakeClock(NOW)).sign(keyfile(private), AUD, algorithm=alg)


def test_diagnosis() -> None:
    key = keyfile(RSA, expirationDate="2026-11-29T12:00:00Z")
    assert diagnose(key, NOW) == "expired"  # at the instant itself the key is dead
    fresh = keyfile(RSA)
    assert diagnose(fresh, NOW, server_date=NOW + timedelta(minutes=5)) == "clock_skew"
    assert diagnose(fresh, NOW, server_date=NOW + timedelta(seconds=3)) == "revoked_or_unknown"
    assert diagnose(fresh, NOW, error_code="invalid_request") == "malformed"
