"""Issuer answers classified by docs/zitadel.md §4, with httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from keyd.clients.issuer import IssuerClient, normalise_scopes
from keyd.clock import FakeClock
from keyd.errors import (
    IssuerBadResponse,
    IssuerRejected,
    IssuerUnavailable,
    UsageError,
)
from keyd.redact import Secret

ISSUER = "https://zitadel.example"
DISCOVERY = {
    "issuer": ISSUER,
    "token_endpoint": f"{ISSUER}/oauth/v2/token",
    "introspection_endpoint": f"{ISSUER}/oauth/v2/introspect",
    "jwks_uri": f"{ISSUER}/oauth/v2/keys",
}
ASSERTION = Secret("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ1MSJ9.c2ln")


class Recorder:
    """Answers discovery, then whatever ``token`` returns; records requests."""

    def __init__(self, token: Callable[[httpx.Request], httpx.Response]) -> None:
        self.token = token
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=DISCOVERY)
        return self.token(request)


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> IssuerClient:
    return IssuerClient(ISSUER, clock=FakeClock(), transport=httpx.MockTransport(handler))


def answer(
    status: int, body: object = None, *, text: str | None = None, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(_: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def test_success_and_request_shape() -> None:
    rec = Recorder(
        answer(
            200,
            {"access_token": "zat_abc", "token_type": "Bearer", "expires_in": 43200, "id_token": "ignored"},
        )
    )
    with client_for(rec) as client:
        token = client.request_token(ASSERTION, ["urn:zitadel:iam:org:project:id:zitadel:aud"])
    assert token.access_token.reveal() == "zat_abc" and "zat_abc" not in repr(token)
    assert token.expires_in == 43200
    assert token.expires_at == datetime(2026, 1, 1, 12, tzinfo=UTC)
    form = dict(httpx.QueryParams(rec.requests[-1].content.decode()))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert form["scope"] == "openid urn:zitadel:iam:org:project:id:zitadel:aud"
    assert form["assertion"] == ASSERTION.reveal()


@pytest.mark.parametrize(
    ("handler", "error", "words"),
    [
        (
            answer(400, {"error": "invalid_grant", "error_description": "invalid assertion"}),
            IssuerRejected,
            "invalid_grant",
        ),
        (
            answer(500, {"error": "server_error", "error_description": "Errors.Internal"}),
            IssuerRejected,
            "server_error",
        ),  # older ZITADEL: an ordinary unknown key
        (answer(401, {"error": "invalid_client"}), IssuerRejected, "invalid_client"),
        (answer(503, {"error": "temporarily_unavailable"}), IssuerUnavailable, "503"),
        (answer(502, text="<html>bad gateway</html>"), IssuerUnavailable, "502"),
        (answer(504, text=""), IssuerUnavailable, "504"),
        (answer(429, text="slow down"), IssuerUnavailable, "429"),
        (
            answer(200, text="<html><body>login</body></html>", headers={"content-type": "text/html"}),
            IssuerBadResponse,
            "HTML",
        ),
        (answer(200, {"token_type": "Bearer", "expires_in": 10}), IssuerBadResponse, "no access_token"),
        (answer(200, {"access_token": "", "expires_in": 10}), IssuerBadResponse, "no access_token"),
        (
            answer(200, {"access_token": "x", "token_type": "mac", "expires_in": 10}),
            IssuerBadResponse,
            "token_type",
        ),
        (answer(200, {"access_token": "x", "expires_in": -1}), IssuerBadResponse, "expires_in"),
        (answer(200, [1, 2]), IssuerBadResponse, "not a JSON object"),
        (answer(500, text="Internal Server Error"), IssuerBadResponse, "not JSON"),
        (answer(404, {"message": "nope"}), IssuerBadResponse, "HTTP 404"),
        (answer(200, text="x" * 400_000), IssuerBadResponse, "larger than"),
    ],
)
def test_classification(
    handler: Callable[[httpx.Request], httpx.Response], error: type[Exception], words: str
) -> None:
    with client_for(Recorder(handler)) as client, pytest.raises(error) as exc:
        client.request_token(ASSERTION, [])
    assert words in str(exc.value)
    assert ASSERTION.reveal() not in str(exc.value)


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("closed")]
)
def test_transport_errors_are_unavailable(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with client_for(handler) as client, pytest.raises(IssuerUnavailable) as err:
        client.discover()
    assert err.value.retryable


def test_remote_text_is_scrubbed() -> None:
    leak = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abcdefgh"
    with client_for(
        Recorder(answer(400, {"error": "invalid_grant", "error_description": f"bad {leak}"}))
    ) as client:
        with pytest.raises(IssuerRejected) as err:
            client.request_token(ASSERTION, [])
    assert leak not in str(err.value) and "[redacted]" in str(err.value)


def test_discovery_is_cached_and_validated() -> None:
    rec = Recorder(answer(200, {"access_token": "t", "expires_in": 5}))
    with client_for(rec) as client:
        client.request_token(ASSERTION, [])
        client.request_token(ASSERTION, [])
    assert [r.url.path for r in rec.requests].count("/.well-known/openid-configuration") == 1

    def bad_discovery(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**DISCOVERY, "token_endpoint": "http://evil.example/t"})

    with client_for(bad_discovery) as client, pytest.raises(IssuerBadResponse, match="https"):
        client.discover()


def test_introspection_any_wellformed_answer_proves_the_key() -> None:
    rec = Recorder(answer(200, {"active": False}))
    with client_for(rec) as client:
        client.introspect(ASSERTION)
    form = dict(httpx.QueryParams(rec.requests[-1].content.decode()))
    assert form["client_assertion_type"].endswith("client-assertion-type:jwt-bearer")
    with client_for(Recorder(answer(401, {"error": "invalid_client"}))) as client:
        with pytest.raises(IssuerRejected):
            client.introspect(ASSERTION)


@pytest.mark.parametrize(
    "url", ["http://zitadel.example", "ftp://x", "https://x/?a=1", "https://user:pw@x", "zitadel.example"]
)
def test_issuer_url_rules(url: str) -> None:
    with pytest.raises(UsageError):
        IssuerClient(url, clock=FakeClock())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://localhost",
        "http://[::1]:1",
        "http://127.3.4.5",
        "https://acme.zitadel.cloud",
    ],
)
def test_loopback_http_allowed(url: str) -> None:
    IssuerClient(url, clock=FakeClock()).close()


def test_scopes_always_start_with_openid() -> None:
    assert normalise_scopes([]) == ["openid"]
    assert normalise_scopes(["a b", "openid", "a"]) == ["openid", "a", "b"]
    assert json.dumps(normalise_scopes(["x"])) == '["openid", "x"]'
