"""VaultClient's HTTP session: environment settings are resolved once at
construction (requests would re-scan ``os.environ`` on every request, a
fifth of keyd's client CPU per Vault call) with the same outcome, and the
keep-alive pool is sized for the token write-back pool."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from keyd.clients.vault import VaultClient
from keyd.clock import FakeClock
from keyd.config import VaultConfig
from keyd.redact import Secret

ADDR = "https://vault.test:8200"


def config(**extra: object) -> VaultConfig:
    return VaultConfig(addr=ADDR, token=Secret("hvs.x"), timeout=timedelta(seconds=5), **extra)  # type: ignore[arg-type]


def session_of(client: VaultClient) -> requests.Session:
    return client._hvac.adapter.session  # type: ignore[no-any-return]


def test_proxy_and_ca_bundle_from_the_environment_are_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/env-bundle.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with VaultClient(config(), FakeClock()) as client:
        session = session_of(client)
        assert session.trust_env is False
        assert session.proxies.get("https") == "http://proxy.test:3128"
        assert client._hvac.adapter._kwargs["verify"] == "/etc/ssl/env-bundle.pem"
        monkeypatch.setenv("HTTPS_PROXY", "http://later.test:1")  # read once, at start
        assert session.proxies.get("https") == "http://proxy.test:3128"


def test_no_proxy_and_explicit_verify_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "vault.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/env-bundle.pem")
    with VaultClient(config(verify=False), FakeClock()) as client:
        assert "https" not in session_of(client).proxies
        assert client._hvac.adapter._kwargs["verify"] is False


def test_pool_holds_a_connection_per_worker() -> None:
    with VaultClient(config(), FakeClock(), max_connections=24) as client:
        adapter = session_of(client).get_adapter(ADDR)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter._pool_maxsize == 24  # type: ignore[attr-defined]
