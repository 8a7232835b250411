"""New key pairs for rotation, made in memory, and the key file ZITADEL
would have handed out for them (docs/zitadel.md §1, §5).

keyd generates the pair itself and registers only the public key
(AddKey with ``publicKey``), so the private key never crosses the
network; it exists in this process and at the locations keyd writes it
to. ``NewKey`` and ``KeyDocument`` never show key material in a
``repr`` and refuse to be pickled.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyd.sources.keyfile import KeyFile, parse_keyfile
from keyd.timeutil import isoformat_z
from keyd.vocab import KeyKind

#: ``rotation.algorithm`` values. RSA keys are written as PKCS#1
#: (``RSA PRIVATE KEY``, what ZITADEL hands out), EC P-256 as SEC1.
ALGORITHMS: Final = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256")
DEFAULT_ALGORITHM: Final = "rsa-2048"
_RSA_EXPONENT: Final = 65537


class NewKey:
    """A freshly generated private key (material hidden from ``repr``)."""

    __slots__ = ("_key", "algorithm")

    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: str) -> None:
        self._key = key
        self.algorithm = algorithm

    def public_pem(self) -> str:
        """SubjectPublicKeyInfo PEM: not secret."""
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def public_key_b64(self) -> str:
        """What AddKey's ``publicKey`` wants: the base64 of the PEM."""
        return base64.b64encode(self.public_pem().encode()).decode()

    def private_pem(self) -> str:
        fmt = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 for RSA, SEC1 for EC
        return self._key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()

    def __repr__(self) -> str:
        return f"NewKey({self.algorithm}, [redacted])"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("NewKey is not picklable")


def generate(algorithm: str = DEFAULT_ALGORITHM) -> NewKey:
    """A new private key for ``algorithm`` (one of ``ALGORITHMS``)."""
    if algorithm == "ec-p256":
        return NewKey(ec.generate_private_key(ec.SECP256R1()), algorithm)
    if algorithm in ALGORITHMS:
        bits = int(algorithm.removeprefix("rsa-"))
        return NewKey(rsa.generate_private_key(_RSA_EXPONENT, bits), algorithm)
    raise ValueError(f"unknown key algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")


@dataclass(frozen=True)
class KeyDocument:
    """The key file for a registered key: ``type``, ``keyId``, ``key``,
    ``expirationDate``, ``userId``, in that order, as ZITADEL writes it."""

    key_id: str
    user_id: str
    expires_at: datetime
    key: NewKey

    def fields(self) -> dict[str, Any]:
        """The key-file JSON object (holds the private key)."""
        return {
            "type": KeyKind.SERVICE_ACCOUNT,
            "keyId": self.key_id,
            "key": self.key.private_pem(),
            "expirationDate": isoformat_z(self.expires_at.astimezone(UTC)),
            "userId": self.user_id,
        }

    def text(self) -> str:
        """The key file's bytes as text (holds the private key)."""
        return json.dumps(self.fields(), indent=2) + "\n"

    def keyfile(self, source: str = "(new key, in memory)", tz: tzinfo = UTC) -> KeyFile:
        """The parsed ``KeyFile``, to sign with before anything is written."""
        return parse_keyfile(self.text(), source=source, tz=tz, validate="quick")

    def __repr__(self) -> str:
        return (
            f"KeyDocument(key_id={self.key_id!r}, user_id={self.user_id!r}, "
            f"expires_at={self.expires_at.isoformat()}, key=[redacted])"
        )

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("KeyDocument is not picklable")
