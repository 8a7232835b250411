"""The test issuer enforces docs/zitadel.md §3-4 exactly; assertions are crafted
with PyJWT here, independent of keyd's signer. Time is pinned with a
FakeClock so every boundary is exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from keyd.clock import FakeClock
from keyd.sources.keyfile import read_keyfile
from tests.support.issuer import NEW_STYLE, OLD_STYLE, IssuerServer
from tests.support.issuer_fixtures import T0
from tests.support.keys import MadeKey, make_key_file

pytestmark = pytest.mark.issuer
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def key(issuer: IssuerServer, clock: FakeClock) -> MadeKey:
    return make_key_file(None, register_with=issuer, expires_at=T0 + timedelta(days=30))


def public_pem(key: MadeKey) -> str:
    return (
        key.private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(
    key: MadeKey,
    aud: Any,
    *,
    alg: str = "RS256",
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """An assertion at T0 (iat now, exp +5 min); ``claims`` override (None drops)."""
    body = {
        "iss": key.principal,
        "sub": key.principal,
        "aud": aud,
        "iat": T0.timestamp(),
        "exp": T0.timestamp() + 300,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    head = {"kid": key.key_id if kid is None else kid, **(headers or {})}
    return jwt.encode(body, key.private_key, algorithm=alg, headers={k: v for k, v in head.items() if v})


def mint(client: httpx.Client, issuer: IssuerServer, assertion: str, scope: str = "openid") -> httpx.Response:
    return client.post(
        issuer.url + "/oauth/v2/token", data={"grant_type": GRANT, "assertion": assertion, "scope": scope}
    )


def test_discovery_names_the_server_exactly(issuer: IssuerServer, client: httpx.Client) -> None:
    doc = client.get(issuer.url + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == issuer.url and not issuer.url.endswith("/")
    assert doc["token_endpoint"] == issuer.url + "/oauth/v2/token"
    assert doc["introspection_endpoint"] == issuer.url + "/oauth/v2/introspect"
    assert client.get(doc["jwks_uri"]).json() == {"keys": []}


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
def test_good_assertion_gets_a_token(
    issuer: IssuerServer, client: httpx.Client, clock: FakeClock, alg: str
) -> None:
    key = make_key_file(None, alg=alg, register_with=issuer, expires_at=None)
    response = mint(
        client,
        issuer,
        sign(key, [issuer.url, "other"], alg=alg),
        "openid urn:zitadel:iam:org:project:id:zitadel:aud",
    )
    assert response.status_code == 200, issuer.rejections
    body = response.json()
    assert body["access_token"].startswith("zat_") and body["token_type"] == "Bearer"
    assert body["expires_in"] == 43200 and body["scope"].startswith("openid ")
    assert issuer.issued_tokens == [body["access_token"]]
    assert issuer.tokens_by_key[key.key_id] == issuer.attempts_by_key[key.key_id] == 1
    issuer.set_token_lifetime(600)
    assert mint(client, issuer, sign(key, issuer.url, alg=alg)).json()["expires_in"] == 600


REJECTED = {  # case: (claims overrides, expected reason fragment)
    "iss != sub": ({"sub": "someone-else"}, "iss and sub"),
    "wrong aud": ({"aud": "https://zitadel.internal"}, "aud"),
    "trailing slash aud": ({"aud": "{url}/"}, "aud"),
    "no aud": ({"aud": None}, "aud"),
    "iat 2 s ahead": ({"iat": T0.timestamp() + 2}, "iat"),
    "iat 61 min old": ({"iat": T0.timestamp() - 61 * 60}, "iat"),
    "no iat": ({"iat": None}, "iat"),
    "exp in 0.5 s": ({"exp": T0.timestamp() + 0.5}, "exp"),
    "exp past": ({"exp": T0.timestamp() - 10}, "exp"),
    "no exp": ({"exp": None}, "exp"),
    "unknown iss": ({"iss": "nobody", "sub": "nobody"}, "unknown issuer"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_claim_rules(issuer: IssuerServer, client: httpx.Client, key: MadeKey, case: str) -> None:
    overrides, reason = REJECTED[case]
    overrides = {k: v.format(url=issuer.url) if isinstance(v, str) else v for k, v in overrides.items()}
    aud = overrides.pop("aud", issuer.url)
    response = mint(client, issuer, sign(key, aud, **overrides))
    assert (response.status_code, response.json()) == (400, NEW_STYLE)
    assert reason in issuer.rejections[-1], issuer.rejections
    assert issuer.issued_tokens == []


def test_key_rules(issuer: IssuerServer, client: httpx.Client, key: MadeKey) -> None:
    other = make_key_file(None, register_with=issuer)
    dying = make_key_file(
        None, user_id=key.principal, register_with=issuer, expires_at=T0 + timedelta(seconds=1)
    )
    assert mint(client, issuer, sign(dying, issuer.url)).status_code == 200  # 1 s left: alive
    dead = make_key_file(None, user_id=key.principal, register_with=issuer, expires_at=T0)
    cases = {
        "unknown kid": sign(key, issuer.url, kid="999"),
        "kid of another user": sign(other, issuer.url, iss=key.principal, sub=key.principal),
        "expiration == now": sign(dead, issuer.url),
        "no kid": sign(key, issuer.url, kid=""),
        "HS256": jwt.encode({"iss": key.principal}, "s" * 32, "HS256", {"kid": key.key_id}),
    }
    for name, assertion in cases.items():
        response = mint(client, issuer, assertion)
        assert (response.status_code, response.json()) == (400, NEW_STYLE), name
    issuer.remove_key(key.key_id)
    issuer.remove_key(key.key_id)  # already gone: fine
    assert mint(client, issuer, sign(key, issuer.url)).status_code == 400
    assert len(issuer.issued_tokens) == 1


def test_scope_must_include_openid(issuer: IssuerServer, client: httpx.Client, key: MadeKey) -> None:
    response = mint(client, issuer, sign(key, issuer.url), scope="profile")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_old_zitadel_rejects_with_500(issuer: IssuerServer, client: httpx.Client, key: MadeKey) -> None:
    issuer.reject_style = "500"
    response = mint(client, issuer, sign(key, issuer.url + "/"))
    assert (response.status_code, response.json()) == (500, OLD_STYLE)
    assert mint(client, issuer, sign(key, issuer.url)).status_code == 200


@pytest.mark.parametrize("mode", ["502", "503", "504", "garbage", "no_token", "oversized"])
def test_fault_replies(issuer: IssuerServer, client: httpx.Client, key: MadeKey, mode: str) -> None:
    issuer.fail_next(2, mode)
    for _ in range(2):
        response = mint(client, issuer, sign(key, issuer.url))
        assert "access_token" not in response.text
        if mode.isdigit():
            assert response.status_code == int(mode)
        elif mode == "garbage":
            assert response.headers["content-type"] == "text/html"
        elif mode == "oversized":
            assert len(response.content) > 4 << 20
    assert mint(client, issuer, sign(key, issuer.url)).status_code == 200
    issuer.fail_mode = mode
    assert "access_token" not in mint(client, issuer, sign(key, issuer.url)).text


def test_close_and_outage(issuer: IssuerServer, client: httpx.Client, key: MadeKey) -> None:
    issuer.fail_next(1, "close")
    with pytest.raises(httpx.RemoteProtocolError):
        mint(client, issuer, sign(key, issuer.url))
    assert mint(client, issuer, sign(key, issuer.url)).status_code == 200
    issuer.stop()  # an outage: refused, then back on the same URL with the same keys
    with pytest.raises(httpx.ConnectError):
        mint(client, issuer, sign(key, issuer.url))
    assert issuer.start() and mint(client, issuer, sign(key, issuer.url)).status_code == 200


def test_hang_delays_one_request_but_not_others(issuer: IssuerServer, key: MadeKey) -> None:
    issuer.hang_seconds = 1.0
    issuer.fail_next(1, "hang")
    results: list[tuple[int, float]] = []

    def slow() -> None:
        with httpx.Client() as c:
            start = time.monotonic()
            results.append((mint(c, issuer, sign(key, issuer.url)).status_code, time.monotonic() - start))

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    with httpx.Client() as c:
        start = time.monotonic()
        assert mint(c, issuer, sign(key, issuer.url)).status_code == 200
        assert time.monotonic() - start < 0.8  # served while the other hangs (1 s)
    thread.join()
    assert results[0][0] == 200 and results[0][1] >= 0.9


def test_stop_does_not_wait_for_a_hang(key: MadeKey) -> None:
    server = IssuerServer().start()
    server.fail_mode, server.hang_seconds = "hang", 30
    errors: list[Exception] = []

    def request() -> None:
        with httpx.Client() as c:
            try:
                c.get(server.url + "/.well-known/openid-configuration")  # not a fault path
                c.post(server.url + "/oauth/v2/token", data={"grant_type": GRANT})
            except httpx.HTTPError as exc:
                errors.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.3)
    start = time.monotonic()
    server.stop()
    thread.join()
    assert time.monotonic() - start < 2 and isinstance(errors[0], httpx.RemoteProtocolError)


def test_concurrent_requests(issuer: IssuerServer, key: MadeKey) -> None:
    assertion = sign(key, issuer.url)
    statuses: list[int] = []

    def worker() -> None:
        with httpx.Client() as c:
            statuses.extend(mint(c, issuer, assertion).status_code for _ in range(20))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 160
    assert len(set(issuer.issued_tokens)) == issuer.tokens_issued == 160


def test_introspection_authenticates_application_keys(
    issuer: IssuerServer, client: httpx.Client, key: MadeKey
) -> None:
    app = make_key_file(None, kind="application", register_with=issuer)
    token = mint(client, issuer, sign(key, issuer.url)).json()["access_token"]

    def introspect(assertion: str, value: str) -> httpx.Response:
        return client.post(
            issuer.url + "/oauth/v2/introspect",
            data={"client_assertion_type": CLIENT_ASSERTION, "client_assertion": assertion, "token": value},
        )

    assert introspect(sign(app, issuer.url), "zat_unknown").json() == {"active": False}
    active = introspect(sign(app, issuer.url), token).json()
    assert active["active"] is True and active["sub"] == key.principal
    for bad in (
        sign(app, issuer.url + "/"),
        sign(key, issuer.url),
        sign(app, issuer.url, exp=T0.timestamp() + 0.5),
    ):
        response = introspect(bad, token)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    app_grant = mint(client, issuer, sign(app, issuer.url))  # apps do not get user tokens
    assert app_grant.status_code == 400


def test_key_files_match_zitadel(tmp_path: Path, issuer: IssuerServer) -> None:
    made = make_key_file(tmp_path, user_id="2928", key_id="2929", expires_at=T0)
    text = made.path.read_text() if made.path else ""
    assert json.loads(text) == made.data and made.data["userId"] == "2928"
    assert made.data["expirationDate"] == "2026-06-01T12:00:00Z"
    assert made.data["key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert read_keyfile(made.path).key_id == "2929"
    app = make_key_file(tmp_path, kind="application", alg="ES256", pkcs8=True, expires_at=None)
    assert "expirationDate" not in app.data and app.data["clientId"] == app.principal
    assert app.data["key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert read_keyfile(app.path).principal == app.principal


def test_standalone_admin_api_and_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.issuer", "--port", "0", "--state-file", str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        key = make_key_file(None)
        spec = {
            "principal": key.principal,
            "key_id": key.key_id,
            "kind": "serviceaccount",
            "public_key_pem": public_pem(key),
            "expires_at": "2099-01-01T00:00:00Z",
        }
        with httpx.Client() as c:
            assert c.post(url + "/_admin/keys", json=spec).status_code == 201
            now = time.time()
            assertion = jwt.encode(
                {"iss": key.principal, "sub": key.principal, "aud": url, "iat": now, "exp": now + 60},
                key.private_key,
                "RS256",
                {"kid": key.key_id},
            )
            data = {"grant_type": GRANT, "assertion": assertion, "scope": "openid"}
            assert c.post(url + "/oauth/v2/token", data=data).status_code == 200
            assert json.loads(state.read_text())["keys"][0]["key_id"] == key.key_id
            assert c.delete(url + f"/_admin/keys/{key.key_id}").status_code == 204
            assert c.post(url + "/oauth/v2/token", data=data).status_code == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        if proc.stdout:
            proc.stdout.close()
    with IssuerServer(state_file=state) as again:  # keys survive a restart
        again.add_key("u1", "k1", public_pem(key), T0)
    with IssuerServer(state_file=state) as reloaded:
        assert [k.key_id for k in reloaded.keys()] == ["k1"]
