"""Suite-wide fixtures: a clean environment for every test, and the test
authorization server (tests/support/issuer.py) for ``@pytest.mark.issuer`` tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.issuer import IssuerServer

_STRIPPED_PREFIXES = ("VAULT_", "BAO_", "KEYD_")
_STRIPPED_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's Vault token, keyd overrides or proxy must never leak
    into a test (httpx honours *_PROXY; hvac honours VAULT_*)."""
    for name in list(os.environ):
        if name.startswith(_STRIPPED_PREFIXES) or name.upper() in _STRIPPED_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def issuer() -> Iterator[IssuerServer]:
    """A running test issuer on a free loopback port, stopped (sockets
    closed, threads joined) after the test. Its URL: ``issuer.url``."""
    with IssuerServer() as server:
        yield server
