"""Discovery is trusted no further than OpenID Discovery allows: its
``issuer`` must be the configured URL byte for byte (it becomes the
assertion's audience), and a token endpoint on another origin never
receives a signed assertion unless ``issuer.allow_endpoints`` lists it.
Two real test issuers: the configured one, and a foreign one that
records every assertion it is sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.checks.assertion import AssertionSigner
from keyd.checks.mint import mint
from keyd.cli import main
from keyd.clients.issuer import IssuerClient
from keyd.clock import SystemClock
from keyd.errors import EXIT_CONFIG, IssuerDiscoveryRefused
from keyd.sources.keyfile import read_keyfile
from tests.support.issuer import TOKEN_PATH, IssuerServer
from tests.support.keys import make_key_file

pytestmark = pytest.mark.issuer
LATER = datetime.now(UTC) + timedelta(days=90)


@pytest.fixture
def foreign() -> Iterator[IssuerServer]:
    with IssuerServer() as server:
        yield server


def test_a_token_endpoint_on_another_origin_gets_no_assertion(
    issuer: IssuerServer, foreign: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    issuer.discovery_overrides = {"token_endpoint": foreign.url + TOKEN_PATH}
    key = read_keyfile(made.path)
    with (
        IssuerClient(issuer.url, clock=SystemClock()) as client,
        pytest.raises(IssuerDiscoveryRefused, match="unless issuer.allow_endpoints lists it"),
    ):
        mint(key, client, AssertionSigner(SystemClock()), ["openid"])
    assert foreign.requests_by_path[TOKEN_PATH] == 0 and foreign.assertions == []
    assert main(["mint", str(made.path), "--issuer", issuer.url]) == EXIT_CONFIG
    assert "another origin" in capsys.readouterr().err

    # the split deployment, declared: the assertion goes there, for the issuer's audience
    foreign.add_key(made.principal, made.key_id, made.private_key.public_key(), LATER)
    foreign.issuer = issuer.url  # it accepts assertions addressed to the real issuer
    foreign.oauth.issuer = issuer.url
    with IssuerClient(issuer.url, clock=SystemClock(), allow_endpoints=[foreign.url]) as client:
        token = mint(key, client, AssertionSigner(SystemClock()), ["openid"])
    assert token.access_token.reveal() in foreign.issued_tokens
    assert foreign.assertions[-1][1]["aud"] == issuer.url


def test_discovery_naming_another_issuer_is_refused(issuer: IssuerServer, tmp_path: Path) -> None:
    made = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    issuer.discovery_overrides = {"issuer": "https://evil.example"}
    with (
        IssuerClient(issuer.url, clock=SystemClock()) as client,
        pytest.raises(IssuerDiscoveryRefused, match="must be identical"),
    ):
        mint(read_keyfile(made.path), client, AssertionSigner(SystemClock()), ["openid"])
    assert issuer.requests_by_path[TOKEN_PATH] == 0  # no assertion for evil.example
