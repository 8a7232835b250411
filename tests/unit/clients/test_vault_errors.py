"""VaultClient error mapping and token decisions without a server: a fake
requests transport answers what a hostile or broken Vault could."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from keyd.clients.vault import VaultClient
from keyd.clients.vault_model import TokenTimer, metadata_from
from keyd.clock import FakeClock
from keyd.config import VaultConfig
from keyd.errors import (
    ConfigError,
    VaultAuthFailed,
    VaultConflict,
    VaultDenied,
    VaultError,
    VaultUnavailable,
)
from keyd.redact import Secret

TOKEN = "hvs.SUPERSECRETTOKEN0123456789"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4eHh4eCJ9.c2lnbmF0dXJlc2ln"
ADDR = "http://vault.test:8200"

Answer = tuple[int, Any] | BaseException
Handler = Callable[[requests.PreparedRequest], Answer]


class FakeTransport(BaseAdapter):
    """Answers requests from ``handler``; records what was sent."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.sent: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append((request, kwargs))
        answer = self.handler(request)
        if isinstance(answer, BaseException):
            raise answer
        status, body = answer
        resp = requests.Response()
        resp.status_code = status
        resp.request = request
        resp.url = str(request.url)
        if isinstance(body, bytes):
            resp._content = body
        else:
            resp._content = json.dumps(body).encode() if body is not None else b""
            resp.headers["Content-Type"] = "application/json"
        return resp

    def close(self) -> None:
        pass


def route(table: dict[tuple[str, str], Answer]) -> Handler:
    """Answer by (method, path-prefix); lookup-self is fine unless listed."""

    def handler(request: requests.PreparedRequest) -> Answer:
        path = str(request.path_url).split("?")[0]
        for (method, prefix), answer in table.items():
            if request.method == method and path.startswith(prefix):
                return answer
        if path == "/v1/auth/token/lookup-self":
            return 200, {"data": {"ttl": 0, "renewable": False}}
        return 404, {"errors": []}

    return handler


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert TOKEN not in caplog.text and JWT not in caplog.text


def make(handler: Handler, clock: FakeClock | None = None, **cfg: Any) -> tuple[VaultClient, FakeTransport]:
    transport = FakeTransport(handler)
    session = requests.Session()
    session.mount("http://", transport)
    values: dict[str, Any] = {"addr": ADDR, "token": Secret(TOKEN), "timeout": timedelta(seconds=5)}
    values.update(cfg)
    return VaultClient(VaultConfig(**values), clock or FakeClock(), session=session), transport


def failing(status: int, errors: list[str]) -> Handler:
    return route({("GET", "/v1/secret/data/"): (status, {"errors": errors})})


@pytest.mark.parametrize(
    ("status", "errors", "kind", "words"),
    [
        (503, ["Vault is sealed"], VaultUnavailable, "503: Vault is sealed"),
        (500, ["internal error"], VaultUnavailable, "500: internal error"),
        (502, [], VaultUnavailable, "502: no detail"),
        (429, ["rate limited"], VaultUnavailable, "429"),
        (400, ["bad request"], VaultUnavailable, "400: bad request"),
        (418, ["teapot"], VaultUnavailable, "HTTP error"),
        (403, ["permission denied"], VaultDenied, "permission denied"),
        (401, [], VaultDenied, "permission denied"),
    ],
)
def test_http_failures_map_to_types(
    status: int, errors: list[str], kind: type[Exception], words: str, caplog_debug: pytest.LogCaptureFixture
) -> None:
    client, _ = make(failing(status, errors))
    with client, pytest.raises(kind) as raised:
        client.read("secret", "zitadel/keys/a")
    assert type(raised.value) is kind  # a live token: never VaultAuthFailed here
    assert words in str(raised.value)
    assert "secret/zitadel/keys/a" in str(raised.value)


def test_messages_never_carry_the_token_or_a_jwt(caplog_debug: pytest.LogCaptureFixture) -> None:
    client, _ = make(failing(500, [f"bad token {TOKEN} near {JWT}", "x" * 5000]))
    with client, pytest.raises(VaultUnavailable) as raised:
        client.read("secret", "a")
    text = str(raised.value)
    assert TOKEN not in text and JWT not in text and len(text) < 600
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_cas_mismatch_is_a_conflict() -> None:
    handler = route(
        {
            ("POST", "/v1/secret/data/"): (
                400,
                {"errors": ["check-and-set parameter did not match the current version"]},
            )
        }
    )
    client, _ = make(handler)
    with client, pytest.raises(VaultConflict) as raised:
        client.write_cas("secret", "tokens/u1", {"access_token": TOKEN}, cas=3)
    assert raised.value.path == "secret/tokens/u1" and TOKEN not in str(raised.value)


def test_cas_required_is_not_blamed_on_someone_else() -> None:
    """OpenBao's answer to a write without ``cas`` on a ``cas_required``
    secret is a 400 too, but nobody changed the secret: it is not a
    conflict, and the message carries the server's own words."""
    handler = route(
        {("POST", "/v1/secret/data/"): (400, {"errors": ["check-and-set parameter required for this call"]})}
    )
    client, _ = make(handler)
    with client, pytest.raises(VaultError) as raised:
        client.write_cas("secret", "tokens/u1", {"access_token": TOKEN}, cas=3)
    assert not isinstance(raised.value, VaultConflict)
    assert "someone else" not in str(raised.value)
    assert "check-and-set parameter required" in str(raised.value) and TOKEN not in str(raised.value)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (
            requests.exceptions.ConnectTimeout("http://vault.test:8200/v1/x?secret"),
            "no complete answer within 5s",
        ),
        (requests.exceptions.ReadTimeout("read timed out"), "no complete answer within 5s"),
        (requests.exceptions.SSLError("certificate verify failed"), "vault.ca_bundle"),
        (requests.exceptions.ConnectionError("refused /v1/secret?secret"), "connection failed"),
        (requests.exceptions.ChunkedEncodingError("broken"), "ChunkedEncodingError"),
    ],
)
def test_transport_failures_are_unavailable_with_rebuilt_messages(exc: BaseException, words: str) -> None:
    client, _ = make(lambda request: exc)
    with client, pytest.raises(VaultUnavailable) as raised:
        client.list_recursive("secret", "keys")
    assert words in str(raised.value) and "?secret" not in str(raised.value)
    assert raised.value.retryable


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = VaultConfig(addr=f"http://127.0.0.1:{port}", token=Secret(TOKEN), timeout=timedelta(seconds=2))
    with VaultClient(cfg, FakeClock()) as client, pytest.raises(VaultUnavailable):
        client.health()


def test_non_json_answers_are_unavailable_not_crashes() -> None:
    handler = route(
        {
            ("GET", "/v1/secret/data/"): (200, b"<html>proxy login</html>"),
            ("GET", "/v1/sys/health"): (200, b"<html></html>"),
        }
    )
    client, _ = make(handler)
    with client:
        with pytest.raises(VaultUnavailable):
            client.read("secret", "a")
        with pytest.raises(VaultUnavailable):
            client.health()


def test_not_found_is_none_or_empty() -> None:
    client, _ = make(route({}))
    with client:
        assert client.read("secret", "a") is None
        assert client.read_metadata("secret", "a") is None
        assert client.list_recursive("secret", "nothing") == []
        assert client.list_versions("secret", "nothing") == {}


def test_without_detailed_listing_falls_back_to_list() -> None:
    handler = route(
        {
            ("LIST", "/v1/secret/detailed-metadata/"): (405, {"errors": ["unsupported operation"]}),
            ("LIST", "/v1/secret/metadata/keys/b"): (200, {"data": {"keys": ["c"]}}),
            ("LIST", "/v1/secret/metadata/keys"): (200, {"data": {"keys": ["a", "b/"]}}),
        }
    )
    client, _ = make(handler)
    with client:
        assert client.list_versions("secret", "keys") == {"keys/a": None, "keys/b/c": None}


def test_dead_token_on_a_403_is_auth_failure_for_token_auth() -> None:
    handler = route(
        {
            ("GET", "/v1/secret/data/"): (403, {"errors": ["permission denied"]}),
            ("GET", "/v1/auth/token/lookup-self"): (403, {"errors": ["bad token"]}),
        }
    )
    calls = {"lookups": 0}

    def counting(request: requests.PreparedRequest) -> Answer:
        if request.path_url.startswith("/v1/auth/token/lookup-self"):
            calls["lookups"] += 1
            if calls["lookups"] == 1:  # alive at start, revoked later
                return 200, {"data": {"ttl": 3600, "creation_ttl": 3600, "renewable": True}}
        return handler(request)

    client, _ = make(counting)
    with client, pytest.raises(VaultAuthFailed) as raised:
        client.read("secret", "a")
    assert "VAULT_TOKEN" in str(raised.value)


def test_tls_verification_is_on_by_default_and_configurable(tmp_path: Any) -> None:
    ok = route({("GET", "/v1/sys/health"): (200, {"initialized": True, "sealed": False, "version": "2.7.2"})})
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used by the fake transport")
    seen = []
    for extra in ({}, {"ca_bundle": bundle}, {"verify": False}):
        client, transport = make(ok, **extra)
        with client:
            client.health()
        seen.append(transport.sent[0][1]["verify"])
    assert seen[0] is not False and seen[1] == str(bundle) and seen[2] is False


def test_namespace_and_token_headers(caplog_debug: pytest.LogCaptureFixture) -> None:
    client, transport = make(
        route(
            {
                ("GET", "/v1/secret/data/"): (
                    200,
                    {"data": {"data": {"k": "v"}, "metadata": {"version": 4, "custom_metadata": {"m": "1"}}}},
                )
            }
        ),
        namespace="team-a",
    )
    with client:
        secret = client.read("secret", "x")
    assert secret is not None and secret.version == 4 and secret.custom_metadata == {"m": "1"}
    request = transport.sent[-1][0]
    assert request.headers["X-Vault-Namespace"] == "team-a"
    assert request.headers["X-Vault-Token"] == TOKEN


@pytest.mark.parametrize(
    "cfg",
    [
        {"auth": "token", "token": None},
        {"auth": "approle", "token": None},
        {"auth": "approle", "token": None, "role_id": Secret("r")},
        {"auth": "kerberos"},
    ],
)
def test_configs_that_cannot_authenticate_are_refused(cfg: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make(route({}), **cfg)


def test_renewal_is_due_at_a_third_of_the_ttl_with_a_floor() -> None:
    clock = FakeClock()
    timer = TokenTimer()
    timer.set(3600, 3600, True, clock.now())
    assert not timer.due(clock.advance(2390))  # 1210 s left > 1200
    assert timer.due(clock.advance(20))
    timer.set(3, 3, True, clock.now())  # a tiny TTL is not renewed on every call
    assert not timer.due(clock.now()) and timer.due(clock.advance(1.6))
    timer.set(60, 60, True, clock.now())  # floor: 30 s of 60
    assert not timer.due(clock.advance(29)) and timer.due(clock.advance(2))
    timer.set(0, 0, False, clock.now())  # root tokens never expire
    assert not timer.due(clock.advance(10**9))


def test_token_renewal_flow_with_a_fake_server() -> None:
    clock = FakeClock()
    renewals: list[int] = []

    def handler(request: requests.PreparedRequest) -> Answer:
        if request.path_url.startswith("/v1/auth/token/lookup-self"):
            return 200, {"data": {"ttl": 600, "creation_ttl": 600, "renewable": True}}
        if request.path_url.startswith("/v1/auth/token/renew-self"):
            renewals.append(1)
            return 200, {"auth": {"lease_duration": 600, "renewable": True}}
        return 404, {"errors": []}

    client, _ = make(handler, clock)
    with client:
        client.ensure_token()
        clock.advance(390)
        client.ensure_token()
        assert renewals == []
        clock.advance(20)  # 190 s left < 200
        client.ensure_token()
        client.ensure_token()
        assert renewals == [1]


def test_metadata_deletion_states() -> None:
    clock = FakeClock()
    base = {"current_version": 2, "custom_metadata": None}
    past = {**base, "versions": {"2": {"deletion_time": "2025-01-01T00:00:00.1234Z", "destroyed": False}}}
    future = {**base, "versions": {"2": {"deletion_time": "2099-01-01T00:00:00Z", "destroyed": False}}}
    destroyed = {**base, "versions": {"2": {"deletion_time": "", "destroyed": True}}}
    live = {**base, "versions": {"2": {"deletion_time": "", "destroyed": False}}}
    assert metadata_from(past, clock.now()).deleted
    assert metadata_from(destroyed, clock.now()).deleted
    fut = metadata_from(future, clock.now())
    assert not fut.deleted and fut.deletion_pending
    ok = metadata_from(live, clock.now())
    assert not ok.deleted and not ok.deletion_pending and ok.custom_metadata == {}
    assert metadata_from({"current_version": "junk"}, clock.now()).deleted
