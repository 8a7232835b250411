"""Secrets that cannot leak by accident (docs/architecture.md rule 6).

A ``Secret`` holds a private key, an assertion or an access token. Its
``repr`` and ``str`` are redacted, so it is safe in logs, exceptions and
f-strings; the value is only reachable through ``reveal()``, which makes
every deliberate use greppable.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

REDACTED: Final = "[redacted]"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> str:
        """A short, non-reversible handle for correlating without revealing."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:  # never pickle a secret into a cache or queue
        raise TypeError("Secret values are not picklable")


_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_PEM_RE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)


def scrub(text: str) -> str:
    """Remove anything shaped like a JWT or a private PEM from free text
    (used on error bodies from remote servers before they reach a log)."""
    text = _PEM_RE.sub(REDACTED, text)
    return _JWT_RE.sub(REDACTED, text)
