"""Key-file parsing (docs/zitadel.md §1): what ZITADEL writes, and hostile input."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyd.errors import KeyFileError
from keyd.sources import keyfile as kf
from keyd.sources.keyfile import NEVER, parse_keyfile, parse_keyfile_mapping, read_keyfile
from keyd.timeutil import get_zone

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(
    key: Any,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.TraditionalOpenSSL,
    password: bytes | None = None,
) -> str:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc).decode()


def service_file(**over: Any) -> dict[str, Any]:
    doc = {
        "type": "serviceaccount",
        "keyId": "292834923480293",
        "key": pem(RSA_KEY),
        "expirationDate": "2026-01-01T00:00:00Z",
        "userId": "292834923480001",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


def parse(doc: Any, **kw: Any) -> kf.KeyFile:
    return parse_keyfile(json.dumps(doc), source="k.json", **kw)


def test_service_user_key_as_zitadel_writes_it() -> None:
    key = parse(service_file())
    assert (key.kind, key.key_id, key.principal) == ("serviceaccount", "292834923480293", "292834923480001")
    assert (key.algorithm, key.key_size) == ("RS256", 2048)
    assert key.expires_at == datetime(2026, 1, 1, tzinfo=UTC)
    der = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib

    assert key.fingerprint == hashlib.sha256(der).hexdigest()


def test_pkcs8_rsa_and_ec_p256() -> None:
    assert parse(service_file(key=pem(RSA_KEY, serialization.PrivateFormat.PKCS8))).algorithm == "RS256"
    ec_key = parse(service_file(key=pem(EC_KEY, serialization.PrivateFormat.PKCS8)))
    assert (ec_key.algorithm, ec_key.key_size) == ("ES256", 256)


@pytest.mark.parametrize("field", ["clientId", "clientID"])
def test_application_key_accepts_both_spellings(field: str) -> None:
    doc = {"type": "application", "keyId": "k1", "key": pem(RSA_KEY), "appId": "a1", field: "c1"}
    key = parse(doc)
    assert (key.kind, key.principal, key.app_id) == ("application", "c1", "a1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T00:00:00.123456789Z", datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2026-01-01T01:00:00+01:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2025-12-31T19:00:00.5-05:00", datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),  # bare date: midnight at its start, UTC
    ],
)
def test_expiration_formats(raw: str, expected: datetime) -> None:
    assert parse(service_file(expirationDate=raw)).expires_at == expected


def test_bare_date_uses_the_given_zone() -> None:
    key = parse(service_file(expirationDate="2026-06-01"), tz=get_zone("Europe/Zurich"))
    assert key.expires_at == datetime(2026, 5, 31, 22, 0, tzinfo=UTC)


def test_never_and_unknown() -> None:
    never = parse(service_file(expirationDate="9999-12-31T23:59:59Z"))
    assert never.expiry.never and never.expires_at == NEVER
    unknown = parse(service_file(expirationDate=...))
    assert unknown.expiry.unknown and unknown.expires_at is None


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("not json", "not valid JSON"),
        ("", "is empty"),
        ("[1, 2]", "expected a JSON object, found a list"),
        (service_file(type="human"), "unknown key type 'human'"),
        (service_file(type=3), "field 'type' must be a string"),
        (service_file(keyId=...), "missing field 'keyId'"),
        (service_file(keyId=42), "field 'keyId' must be a string, not a number"),
        (service_file(userId=...), "missing field 'userId'"),
        (service_file(key=...), "missing field 'key'"),
        (service_file(key=""), "field 'key' is empty"),
        (service_file(expirationDate="next tuesday"), "is not an RFC 3339 timestamp or a date"),
        (service_file(expirationDate="2026-02-30T00:00:00Z"), "is not an RFC 3339"),
        (service_file(expirationDate=20260101), "must be a string"),
        (
            service_file(key="-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
            "not a valid PEM private key",
        ),
        (service_file(key="hello"), "not a PEM private key"),
        (service_file(key=pem(RSA_KEY, serialization.PrivateFormat.PKCS8, b"pw")), "encrypted"),
        (service_file(key=pem(RSA_KEY, serialization.PrivateFormat.TraditionalOpenSSL, b"pw")), "encrypted"),
        (
            service_file(
                key=RSA_KEY.public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode()
            ),
            "holds a public key",
        ),
        (service_file(key=pem(rsa.generate_private_key(65537, 1024))), "1024 bits"),
        (service_file(key=pem(ec.generate_private_key(ec.SECP384R1()))), "only P-256"),
        ({"type": "application", "keyId": "k", "key": "x"}, "missing field 'clientId'"),
    ],
)
def test_invalid_input_names_the_source_and_problem(doc: Any, problem: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(KeyFileError) as err:
        parse_keyfile(text, source="/etc/keyd/keys/k.json")
    assert err.value.source == "/etc/keyd/keys/k.json"
    assert problem in str(err.value)
    assert str(err.value).startswith("/etc/keyd/keys/k.json: ")
    assert "PRIVATE KEY" not in str(err.value) and "MII" not in str(err.value)


def test_no_key_material_in_repr_or_errors() -> None:
    key = parse(service_file())
    text = repr(key) + str(key) + repr(key.signing_key)
    body = pem(RSA_KEY).splitlines()[1]
    assert body not in text and "PRIVATE" not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key.signing_key)


def test_file_problems(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # a 50 MB file is refused without reading it
    with pytest.raises(KeyFileError, match="a key file is a few KB"):
        read_keyfile(big)
    with pytest.raises(KeyFileError, match="is a directory"):
        read_keyfile(tmp_path)
    with pytest.raises(KeyFileError, match="no such file"):
        read_keyfile(tmp_path / "nope.json")
    with pytest.raises(KeyFileError, match="not UTF-8"):
        (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
        read_keyfile(tmp_path / "bin.json")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_keyfile(fifo)


def test_unreadable_file_is_invalid_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As root every file is readable, so read it with the effective uid of nobody."""
    from keyd.cli import main

    path = tmp_path / "secret.json"
    path.write_text(json.dumps(service_file()))
    path.chmod(0o600)
    tmp_path.chmod(0o755)
    if os.geteuid() == 0:
        os.seteuid(65534)
        try:
            code = main(["inspect", "--json", str(path)])
        finally:
            os.seteuid(0)
    else:
        path.chmod(0)
        code = main(["inspect", "--json", str(path)])
    assert code == 2
    row = json.loads(capsys.readouterr().out)["keys"][0]
    assert row["expiry_status"] == "invalid" and "permission denied" in row["error"]


def test_loaded_key_is_cached_by_content(monkeypatch: pytest.MonkeyPatch) -> None:
    kf.clear_key_cache()
    calls = []
    real = kf._load_uncached
    monkeypatch.setattr(kf, "_load_uncached", lambda *a: calls.append(a[2]) or real(*a))
    doc = service_file()
    for _ in range(5):
        parse(doc)
    parse(service_file(keyId="other"), validate="quick")  # same PEM, less checking: cached
    assert calls == ["full"]


def test_quick_check_catches_inconsistent_key() -> None:
    """A key that cannot produce a valid signature is refused. (OpenSSL 3
    re-checks CRT results and falls back to d, so both must be damaged.)"""
    nums = RSA_KEY.private_numbers()
    bad = rsa.RSAPrivateNumbers(
        p=nums.p,
        q=nums.q,
        d=nums.d ^ 2,
        dmp1=nums.dmp1 ^ 2,
        dmq1=nums.dmq1,
        iqmp=nums.iqmp,
        public_numbers=nums.public_numbers,
    )
    broken = bad.private_key(unsafe_skip_rsa_key_validation=True)
    kf.clear_key_cache()
    with pytest.raises(KeyFileError, match="inconsistent|not a valid"):
        parse(service_file(key=pem(broken)), validate="quick")
    kf.clear_key_cache()
    with pytest.raises(KeyFileError):
        parse(service_file(key=pem(broken)), validate="full")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["serviceaccount", "application", "x"]) | json_values,
        "keyId": st.text(max_size=20) | json_values,
        "userId": st.text(max_size=20) | json_values,
        "clientID": st.text(max_size=5),
        "expirationDate": st.text(max_size=30) | json_values,
        "key": st.sampled_from([pem(RSA_KEY), pem(EC_KEY), "-----BEGIN PRIVATE KEY-----\n"]) | st.text(),
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_parse_or_raise_keyfileerror(data: bytes) -> None:
    try:
        parse_keyfile(data, source="fuzz")
    except KeyFileError as exc:
        assert exc.source == "fuzz"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(fields | json_values)
def test_any_json_parses_or_raises_keyfileerror(doc: Any) -> None:
    try:
        key = parse_keyfile_mapping(doc, source="fuzz")
    except KeyFileError as exc:
        assert "PRIVATE KEY" not in str(exc)
    else:
        assert key.key_id and key.principal


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 1, 1),
        timezones=st.sampled_from([UTC, get_zone("Europe/Zurich"), get_zone("America/St_Johns")]),
    )
)
def test_rfc3339_round_trip(moment: datetime) -> None:
    text = moment.isoformat()  # fixed offset in the text; compare as a fixed-offset instant
    expected = datetime.fromisoformat(text).astimezone(UTC)
    assert parse(service_file(expirationDate=text)).expires_at == expected


def test_a_key_out_of_the_cache_is_reloaded_without_its_check_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaded keys are kept for a few PEMs only (a signed key holds
    ~10 KB in OpenSSL); how far each PEM was checked is kept for many more,
    so a key evicted from the key cache is parsed again unchecked, and a
    stricter check than the one remembered still runs."""
    kf.clear_key_cache()
    monkeypatch.setattr(kf, "_CACHE_MAX", 1)
    calls: list[str] = []
    real = kf._load_uncached
    monkeypatch.setattr(kf, "_load_uncached", lambda *a: calls.append(a[2]) or real(*a))
    first, other = pem(RSA_KEY), pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    parse(service_file(key=first), validate="quick")
    parse(service_file(key=other, keyId="other"), validate="quick")  # evicts the first key
    assert len(kf._cache) == 1 and len(kf._checked) == 2
    parse(service_file(key=first), validate="quick")  # loaded again, check remembered
    parse(service_file(key=other, keyId="other"), validate="full")  # stricter: checked
    parse(service_file(key=first), validate="none")
    assert calls == ["quick", "quick", "none", "full", "none"]
