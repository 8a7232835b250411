"""The issuer client honours the standard proxy variables, read once when
it is built, like the Vault and webhook clients: HTTP(S)_PROXY sends
discovery and token requests through the proxy, NO_PROXY exempts the
issuer's host. A real forwarding proxy and the real test issuer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyd.clients.issuer import IssuerClient
from keyd.clock import SystemClock
from tests.support.issuer import IssuerServer
from tests.support.proxy import ForwardProxy

pytestmark = pytest.mark.issuer


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as server:
        yield server


def test_requests_go_through_http_proxy(
    issuer: IssuerServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with IssuerClient(issuer.url, clock=SystemClock()) as client:
        monkeypatch.delenv("HTTP_PROXY")  # read once, at construction
        discovery = client.discover()
    assert discovery.token_endpoint.startswith(issuer.url)
    assert proxy.seen == [f"GET {issuer.url}/.well-known/openid-configuration"]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*"])
def test_no_proxy_exempts_the_issuer(
    issuer: IssuerServer, proxy: ForwardProxy, no_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    with IssuerClient(issuer.url, clock=SystemClock()) as client:
        client.discover()
    assert proxy.seen == []
