"""New key pairs in memory and ZITADEL's key-file JSON for them."""

from __future__ import annotations

import base64
import json
import pickle
from datetime import UTC, datetime

import pytest

from keyd.actions.keygen import ALGORITHMS, KeyDocument, generate

EXPIRES = datetime(2026, 9, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("algorithm", "alg", "size", "header"),
    [
        ("rsa-2048", "RS256", 2048, "-----BEGIN RSA PRIVATE KEY-----"),
        ("rsa-3072", "RS256", 3072, "-----BEGIN RSA PRIVATE KEY-----"),
        ("ec-p256", "ES256", 256, "-----BEGIN EC PRIVATE KEY-----"),
    ],
)
def test_key_file_is_zitadels_format_and_parses(algorithm, alg, size, header):
    key = generate(algorithm)
    doc = KeyDocument(key_id="300000000000000001", user_id="200000000000000001", expires_at=EXPIRES, key=key)
    fields = json.loads(doc.text())
    assert list(fields) == ["type", "keyId", "key", "expirationDate", "userId"]
    assert fields["type"] == "serviceaccount" and fields["expirationDate"] == "2026-09-01T00:00:00Z"
    assert fields["key"].startswith(header)  # PKCS#1 / SEC1, as ZITADEL hands out
    parsed = doc.keyfile()
    assert (parsed.algorithm, parsed.key_size, parsed.key_id, parsed.principal) == (
        alg,
        size,
        "300000000000000001",
        "200000000000000001",
    )
    assert parsed.expires_at == EXPIRES
    public = base64.b64decode(key.public_key_b64()).decode()
    assert public.startswith("-----BEGIN PUBLIC KEY-----") and public == key.public_pem()


def test_rsa_4096_is_offered():
    assert "rsa-4096" in ALGORITHMS
    assert generate("rsa-4096").private_pem().startswith("-----BEGIN RSA PRIVATE KEY-----")


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="rsa-2048"):
        generate("dsa-1024")


def test_no_material_in_repr_or_pickle():
    key = generate("ec-p256")
    doc = KeyDocument(key_id="k", user_id="u", expires_at=EXPIRES, key=key)
    body = key.private_pem().splitlines()[1]
    for text in (repr(key), str(key), repr(doc), str(doc)):
        assert body not in text and "redacted" in text
    for obj in (key, doc):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
