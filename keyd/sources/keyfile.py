"""Parse ZITADEL key files (docs/zitadel.md §1) into ``KeyFile`` value objects.

The parser accepts exactly what ZITADEL writes and what operators make
themselves: service-user and application keys, PKCS#1 and PKCS#8 RSA, EC
P-256, ``clientId``/``clientID``, a missing ``expirationDate`` (unknown),
``9999-12-31T23:59:59Z`` (never), RFC 3339 with any fraction and offset,
and a bare date (midnight rule, §2). Anything else raises
``KeyFileError`` naming the source and the problem — never another
exception type, and never with key material in the message.

Loading a PEM is expensive (full RSA validation checks the primes:
tens of milliseconds), so loaded keys are cached by content hash and
``validate`` picks how much checking a caller pays for.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from keyd.errors import KeyFileError
from keyd.text import unsafe_char
from keyd.timeutil import parse_when
from keyd.vocab import KeyKind

MAX_FILE_BYTES = 1 << 20  # a ZITADEL key file is ~2 KB; refuse anything over 1 MiB
NEVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
NEVER_YEAR = 9999


Validation = Literal["full", "quick", "none"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningKey:
    """A loaded private key. Its ``repr`` never shows the material."""

    __slots__ = ("_key",)

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def unwrap(self) -> PrivateKey:
        return self._key

    def __repr__(self) -> str:
        return "SigningKey([redacted])"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SigningKey is not picklable")


@dataclass(frozen=True)
class Expiry:
    """``at`` is the instant the key stops working (None = unknown)."""

    at: datetime | None

    @property
    def never(self) -> bool:
        return self.at is not None and self.at.year >= NEVER_YEAR

    @property
    def unknown(self) -> bool:
        return self.at is None


@dataclass(frozen=True)
class KeyFile:
    source: str  # file path or Vault path, for messages
    kind: str  # serviceaccount | application
    key_id: str
    principal: str  # userId, or clientId for application keys
    algorithm: str  # RS256 | ES256
    key_size: int
    fingerprint: str  # hex SHA-256 of the DER SubjectPublicKeyInfo
    expiry: Expiry
    content_hash: str  # hex SHA-256 of the canonical key-file JSON
    signing_key: SigningKey = field(repr=False, compare=False)
    app_id: str | None = None

    @property
    def expires_at(self) -> datetime | None:
        return self.expiry.at


# --- cache of loaded keys, by SHA-256 of the PEM text -----------------------

# Bounded by memory, not by a count that an inventory outgrows. A loaded
# RSA-2048 key costs ~3 KB, ~10.6 KB once it has signed (OpenSSL keeps its
# blinding and Montgomery contexts; measured), so the keys themselves are
# kept for the last ~3,000 PEMs only. What makes a reload expensive is the
# check, not the parse (~0.9 ms to sign and verify against ~0.03 ms to
# parse), so how far each PEM was checked is remembered separately, by its
# digest (~130 bytes an entry): a key that left the key cache is parsed
# again, unchecked, in a fraction of a probe. Keys sharing one PEM share
# one entry.
_CACHE_BYTES = 32 * 1024 * 1024
_ENTRY_BYTES = 10_600
_CACHE_MAX = _CACHE_BYTES // _ENTRY_BYTES
_CHECKED_MAX = 250_000  # ~32 MiB of digests: 2.5x the largest inventory measured
_RANK: dict[Validation, int] = {"none": 0, "quick": 1, "full": 2}
_cache: OrderedDict[str, tuple[SigningKey, str, int, str, Validation]] = OrderedDict()
_checked: OrderedDict[bytes, Validation] = OrderedDict()  # PEM digest -> the check it passed
_cache_lock = threading.Lock()


def clear_key_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _checked.clear()


def read_keyfile(path: str | Path, *, tz: tzinfo = UTC, validate: Validation = "full") -> KeyFile:
    """Read and parse one key file, refusing directories, specials and
    oversized files before reading them."""
    data = read_bounded(path)
    return parse_keyfile(data, source=str(path), tz=tz, validate=validate)


def read_bounded(path: str | Path) -> bytes:
    source = str(path)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(source, "no such file") from None
    except IsADirectoryError:
        raise KeyFileError(source, "is a directory, not a key file") from None
    except PermissionError:
        raise KeyFileError(source, "permission denied (keyd cannot read it)") from None
    except OSError as exc:
        raise KeyFileError(source, f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise KeyFileError(source, "is a directory, not a key file")
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(source, "is not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise KeyFileError(
                source, f"is {st.st_size} bytes; a key file is a few KB (limit {MAX_FILE_BYTES})"
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise KeyFileError(source, f"is larger than {MAX_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except IsADirectoryError:
        raise KeyFileError(source, "is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(source, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def parse_keyfile(
    data: bytes | str, *, source: str, tz: tzinfo = UTC, validate: Validation = "full"
) -> KeyFile:
    """Parse the bytes of a key file (JSON)."""
    if isinstance(data, bytes):
        if len(data) > MAX_FILE_BYTES:
            raise KeyFileError(source, f"is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise KeyFileError(source, "is not UTF-8 text (is it a key file?)") from None
    else:
        text = data
    if not text.strip():
        raise KeyFileError(source, "is empty")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise KeyFileError(source, "is not a key file (JSON nested too deeply)") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise KeyFileError(source, f"is not valid JSON{where}") from None
    return parse_keyfile_mapping(obj, source=source, tz=tz, validate=validate)


def _field(obj: Mapping[str, Any], source: str, *names: str, required: bool = True) -> str | None:
    for name in names:
        if name in obj:
            value = obj[name]
            if not isinstance(value, str):
                raise KeyFileError(source, f"field {name!r} must be a string, not {_type(value)}")
            if not value.strip():
                raise KeyFileError(source, f"field {name!r} is empty")
            if name != "key" and (bad := unsafe_char(value)) is not None:
                raise KeyFileError(
                    source,
                    f"field {name!r} contains the control or "
                    f"non-text character {bad}; ZITADEL ids are "
                    "plain text",
                )
            return value
    if required:
        raise KeyFileError(source, f"missing field {names[0]!r}")
    return None


def _type(value: object) -> str:
    return {
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
        str: "a string",
    }.get(type(value), type(value).__name__)


def parse_keyfile_mapping(
    obj: object, *, source: str, tz: tzinfo = UTC, validate: Validation = "full"
) -> KeyFile:
    """Parse an already-decoded key file (Vault secrets arrive as fields)."""
    if not isinstance(obj, Mapping):
        raise KeyFileError(source, f"is not a key file: expected a JSON object, found {_type(obj)}")
    kind = obj.get("type", KeyKind.SERVICE_ACCOUNT if "userId" in obj else None)
    if kind is None:
        raise KeyFileError(source, 'missing field \'type\' (expected "serviceaccount" or "application")')
    if not isinstance(kind, str):
        raise KeyFileError(source, f"field 'type' must be a string, not {_type(kind)}")
    if kind not in (KeyKind.SERVICE_ACCOUNT, KeyKind.APPLICATION):
        shown = kind[:40]
        raise KeyFileError(source, f'unknown key type {shown!r} (expected "serviceaccount" or "application")')
    key_id = _field(obj, source, "keyId")
    assert key_id is not None
    app_id: str | None = None
    if kind == KeyKind.SERVICE_ACCOUNT:
        principal = _field(obj, source, "userId")
    else:
        principal = _field(obj, source, "clientId", "clientID")
        app_id = _field(obj, source, "appId", required=False)
    assert principal is not None
    if len(key_id) > 128 or len(principal) > 255:
        raise KeyFileError(source, "keyId or principal is implausibly long")
    pem = _field(obj, source, "key")
    assert pem is not None
    expiry = _parse_expiry(obj, source, tz)
    signing_key, fingerprint, size, alg, pem_hash = load_key(pem, source=source, validate=validate)
    canonical = json.dumps(
        {
            "type": kind,
            "keyId": key_id,
            "principal": principal,
            "keyHash": pem_hash,
            "expires": expiry.at.isoformat() if expiry.at else None,
        },
        sort_keys=True,
    )
    return KeyFile(
        source=source,
        kind=kind,
        key_id=key_id,
        principal=principal,
        algorithm=alg,
        key_size=size,
        fingerprint=fingerprint,
        expiry=expiry,
        content_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        signing_key=signing_key,
        app_id=app_id,
    )


def _parse_expiry(obj: Mapping[str, Any], source: str, tz: tzinfo) -> Expiry:
    if "expirationDate" not in obj or obj["expirationDate"] is None:
        return Expiry(None)  # pre-2024 files have none: unknown, never guessed
    raw = obj["expirationDate"]
    if not isinstance(raw, str):
        raise KeyFileError(source, f"field 'expirationDate' must be a string, not {_type(raw)}")
    try:
        at = parse_when(raw, tz)
    except ValueError:
        shown = raw[:40]
        raise KeyFileError(
            source, f"expirationDate {shown!r} is not an RFC 3339 timestamp or a date"
        ) from None
    return Expiry(at)


def load_key(
    pem: str, *, source: str, validate: Validation = "full"
) -> tuple[SigningKey, str, int, str, str]:
    """Load a private PEM once per content: (key, fingerprint, bits, alg, pem hash).

    ``full`` runs OpenSSL's complete check (RSA primes; ~tens of ms);
    ``quick`` skips that but signs and verifies one message, which catches
    inconsistent CRT parameters at a fraction of the cost; ``none`` only
    parses. A cached key was loaded with at least the requested checking.
    """
    digest = hashlib.sha256(pem.encode("utf-8", "surrogatepass")).digest()
    pem_hash = digest.hex()
    with _cache_lock:
        hit = _cache.get(pem_hash)
        if hit is not None and _RANK[hit[4]] >= _RANK[validate]:
            _cache.move_to_end(pem_hash)
            return hit[0], hit[1], hit[2], hit[3], pem_hash
        passed = _checked.get(digest, "none")
    done: Validation = passed if _RANK[passed] >= _RANK[validate] else validate
    key, fingerprint, size, alg = _load_uncached(pem, source, "none" if done == passed else validate)
    entry = (SigningKey(key), fingerprint, size, alg, done)
    with _cache_lock:
        _remember(_cache, pem_hash, entry, _CACHE_MAX)
        _remember(_checked, digest, done, _CHECKED_MAX)
    return entry[0], fingerprint, size, alg, pem_hash


def _remember(cache: OrderedDict[Any, Any], key: object, value: object, limit: int) -> None:
    """Insert as most recently used; drop the least recently used beyond ``limit``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _load_uncached(pem: str, source: str, validate: Validation) -> tuple[PrivateKey, str, int, str]:
    text = pem.strip()
    if "ENCRYPTED" in text.split("\n", 2)[0] or "Proc-Type: 4,ENCRYPTED" in text:
        raise KeyFileError(
            source, "the private key is encrypted; keyd needs the unencrypted key file as ZITADEL issues it"
        )
    if "PUBLIC KEY-----" in text and "PRIVATE KEY-----" not in text:
        raise KeyFileError(source, "field 'key' holds a public key; a key file needs the private key")
    if "-----BEGIN" not in text:
        raise KeyFileError(source, "field 'key' is not a PEM private key")
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise KeyFileError(source, "field 'key' is not a PEM private key (non-ASCII text)") from None
    try:
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=(validate != "full")
        )
    except TypeError:
        raise KeyFileError(
            source, "the private key is encrypted; keyd needs the unencrypted key file as ZITADEL issues it"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(
            source, "field 'key' is not a valid PEM private key (damaged, truncated or an unsupported format)"
        ) from None
    except Exception:  # noqa: BLE001 - OpenSSL can raise odd types on hostile input
        raise KeyFileError(source, "field 'key' could not be loaded as a private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        size, alg = key.key_size, "RS256"
        if size < 2048:
            raise KeyFileError(source, f"RSA key is {size} bits; ZITADEL needs at least 2048")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(source, f"EC key on curve {key.curve.name}; only P-256 (ES256) is supported")
        size, alg = 256, "ES256"
    else:
        raise KeyFileError(source, "unsupported key type (use RSA, or EC P-256)")
    if validate == "quick":
        _sign_check(key, source)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, hashlib.sha256(der).hexdigest(), size, alg


def _sign_check(key: PrivateKey, source: str) -> None:
    """Sign and verify one message: a key whose private parts don't match
    its public modulus (a corrupted CRT value) fails here."""
    message = b"keyd consistency check"
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            sig = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
            key.public_key().verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
            key.public_key().verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise KeyFileError(source, "the private key is inconsistent (damaged key file)") from None
