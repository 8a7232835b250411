"""The test issuer's user service v2 key API behaves as ZITADEL's
(docs/zitadel.md §5): AddKey with a caller-supplied public key, ListKeys
with filters and pagination, RemoveKey, and ZITADEL's authorization.
Requests are made with plain httpx and assertions signed with PyJWT, so
keyd's own client is not what is tested here."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyd.clock import FakeClock
from tests.support.issuer import IssuerServer
from tests.support.issuer_fixtures import T0
from tests.support.keys import MadeKey, make_key_file, rsa_key
from tests.support.zitadel_api import API_SCOPE, DEFAULT_ORG, SEARCH_PATH, make_api_user

pytestmark = pytest.mark.issuer
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ORG_B = "200000000000000002"


def assertion(key: MadeKey, issuer: IssuerServer, kid: str | None = None) -> str:
    now = issuer.now().timestamp()
    return jwt.encode(
        {"iss": key.principal, "sub": key.principal, "aud": issuer.url, "iat": now - 5, "exp": now + 300},
        key.private_key,
        algorithm="RS256",
        headers={"kid": kid or key.key_id},
    )


def mint(
    client: httpx.Client, issuer: IssuerServer, key: MadeKey, scope: str, kid: str | None = None
) -> httpx.Response:
    return client.post(
        issuer.url + "/oauth/v2/token",
        data={"grant_type": GRANT, "assertion": assertion(key, issuer, kid), "scope": scope},
    )


def token(
    client: httpx.Client, issuer: IssuerServer, key: MadeKey, scope: str = f"openid {API_SCOPE}"
) -> str:
    response = mint(client, issuer, key, scope)
    assert response.status_code == 200, issuer.rejections
    return str(response.json()["access_token"])


def call(
    client: httpx.Client, issuer: IssuerServer, method: str, path: str, bearer: str | None, body: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.request(
        method, issuer.url + path, headers=headers, content=None if body is None else json.dumps(body)
    )


def pem_b64(key: Any) -> str:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(pem).decode()


@pytest.fixture
def manager(issuer: IssuerServer, clock: FakeClock) -> MadeKey:
    return make_api_user(issuer)


@pytest.fixture
def bearer(issuer: IssuerServer, client: httpx.Client, manager: MadeKey) -> str:
    return token(client, issuer, manager)


def service_user(issuer: IssuerServer, org: str = DEFAULT_ORG) -> str:
    user = make_key_file(None, register_with=issuer).principal
    issuer.key_api.add_user(user, org)
    return user


def test_added_key_mints_and_removed_key_no_longer_does(
    issuer: IssuerServer, client: httpx.Client, bearer: str, clock: FakeClock
) -> None:
    user = service_user(issuer)
    private = rsa_key(fresh=True)
    expires = T0 + timedelta(days=90)
    added = call(
        client,
        issuer,
        "POST",
        f"/v2/users/{user}/keys",
        bearer,
        {"expirationDate": expires.isoformat().replace("+00:00", "Z"), "publicKey": pem_b64(private)},
    )
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["keyContent"] == "" and body["creationDate"] == "2026-06-01T12:00:00Z"
    key_id = body["keyId"]
    assert key_id.isdigit() and len(key_id) == 18
    new = MadeKey(None, {}, private, key_id, user, expires)
    assert mint(client, issuer, new, "openid").status_code == 200
    listed = call(
        client, issuer, "POST", SEARCH_PATH, bearer, {"filters": [{"keyIdFilter": {"id": key_id}}]}
    ).json()
    assert listed["result"] == [
        {
            "id": key_id,
            "userId": user,
            "organizationId": DEFAULT_ORG,
            "creationDate": "2026-06-01T12:00:00Z",
            "changeDate": "2026-06-01T12:00:00Z",
            "expirationDate": "2026-08-30T12:00:00Z",
        }
    ]
    for _ in range(2):  # idempotent
        gone = call(client, issuer, "DELETE", f"/v2/users/{user}/keys/{key_id}", bearer)
        assert gone.status_code == 200 and "deletionDate" in gone.json()
    assert mint(client, issuer, new, "openid").status_code == 400


def test_add_without_public_key_hands_out_the_key_file_once(
    issuer: IssuerServer, client: httpx.Client, bearer: str
) -> None:
    user = service_user(issuer)
    body = call(client, issuer, "POST", f"/v2/users/{user}/keys", bearer, {}).json()
    content = json.loads(base64.b64decode(body["keyContent"]))
    assert content["keyId"] == body["keyId"] and content["userId"] == user
    assert content["expirationDate"] == "9999-12-31T23:59:59Z"
    private = serialization.load_pem_private_key(content["key"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    made = MadeKey(None, content, private, body["keyId"], user, None)
    assert mint(client, issuer, made, "openid").status_code == 200


@pytest.mark.parametrize("case", ["past", "now", "not base64", "not a key", "RSA 1024", "P-384", "bad date"])
def test_add_validates_expiry_and_public_key(
    issuer: IssuerServer, client: httpx.Client, bearer: str, case: str
) -> None:
    user = service_user(issuer)
    good = pem_b64(rsa_key())
    body = {
        "past": {"expirationDate": "2026-06-01T11:59:59Z", "publicKey": good},
        "now": {"expirationDate": "2026-06-01T12:00:00Z", "publicKey": good},
        "not base64": {"expirationDate": "2027-01-01T00:00:00Z", "publicKey": "%%%"},
        "not a key": {
            "expirationDate": "2027-01-01T00:00:00Z",
            "publicKey": base64.b64encode(b"hello").decode(),
        },
        "RSA 1024": {
            "expirationDate": "2027-01-01T00:00:00Z",
            "publicKey": pem_b64(rsa.generate_private_key(65537, 1024)),
        },
        "P-384": {
            "expirationDate": "2027-01-01T00:00:00Z",
            "publicKey": pem_b64(ec.generate_private_key(ec.SECP384R1())),
        },
        "bad date": {"expirationDate": "tomorrow", "publicKey": good},
    }[case]
    response = call(client, issuer, "POST", f"/v2/users/{user}/keys", bearer, body)
    assert response.status_code == 400 and response.json()["code"] == 3
    if case in ("past", "now"):
        assert response.json()["details"][0]["message"] == "Errors.AuthNKey.ExpireBeforeNow"
    assert len([k for k in issuer.keys() if k.principal == user]) == 1


def test_authorization(issuer: IssuerServer, client: httpx.Client, clock: FakeClock) -> None:
    user_a, user_b = service_user(issuer), service_user(issuer, ORG_B)
    manager = make_api_user(issuer, org=DEFAULT_ORG)
    viewer = make_api_user(issuer, role="ORG_OWNER_VIEWER")
    nobody = make_api_user(issuer, role=None)
    iam = make_api_user(issuer, role="IAM_OWNER", org=None)
    tokens = {
        name: token(client, issuer, made)
        for name, made in [("manager", manager), ("viewer", viewer), ("nobody", nobody), ("iam", iam)]
    }
    tokens["no aud scope"] = token(client, issuer, manager, "openid")
    add = {"expirationDate": "2027-01-01T00:00:00Z", "publicKey": pem_b64(rsa_key())}

    def status(who: str | None, method: str, path: str, body: Any = None) -> int:
        return call(client, issuer, method, path, tokens.get(who or "", who), body).status_code

    list_a = {"filters": [{"organizationIdFilter": {"id": DEFAULT_ORG}}]}
    assert status(None, "POST", f"/v2/users/{user_a}/keys", add) == 401
    assert status("zat_forged", "POST", SEARCH_PATH, list_a) == 401
    assert status("manager", "POST", f"/v2/users/{user_a}/keys", add) == 201
    assert status("manager", "POST", f"/v2/users/{user_b}/keys", add) == 403  # other org
    assert status("manager", "POST", "/v2/users/404404/keys", add) == 404
    assert status("viewer", "POST", f"/v2/users/{user_a}/keys", add) == 403
    assert status("viewer", "POST", SEARCH_PATH, list_a) == 200
    assert status("viewer", "DELETE", f"/v2/users/{user_a}/keys/1") == 403
    assert status("nobody", "POST", SEARCH_PATH, list_a) == 403
    assert status("no aud scope", "POST", SEARCH_PATH, list_a) == 403
    assert status("no aud scope", "POST", f"/v2/users/{user_a}/keys", add) == 403
    assert (
        status("manager", "POST", SEARCH_PATH, {"filters": [{"organizationIdFilter": {"id": ORG_B}}]}) == 403
    )
    assert status("manager", "POST", SEARCH_PATH, {"filters": [{"userIdFilter": {"id": user_b}}]}) == 403
    assert status("iam", "POST", f"/v2/users/{user_b}/keys", add) == 201
    clock.advance(timedelta(hours=13))  # the access token expired
    assert status("manager", "POST", SEARCH_PATH, list_a) == 401


def test_list_filters_orgs_and_skips_application_keys(
    issuer: IssuerServer, client: httpx.Client, clock: FakeClock
) -> None:
    iam = token(client, issuer, make_api_user(issuer, role="IAM_OWNER", org=None))
    user_a, user_b = service_user(issuer), service_user(issuer, ORG_B)
    make_key_file(None, user_id=user_b, register_with=issuer)
    make_key_file(None, kind="application", register_with=issuer)

    def ids(filters: list[Any]) -> list[str]:
        doc = call(client, issuer, "POST", SEARCH_PATH, iam, {"filters": filters}).json()
        return sorted({k["userId"] for k in doc["result"]})

    assert ids([{"userIdFilter": {"id": user_b}}]) == [user_b]
    assert ids([{"organizationIdFilter": {"id": ORG_B}}]) == [user_b]
    both = ids(
        [{"orFilter": {"filters": [{"userIdFilter": {"id": user_a}}, {"userIdFilter": {"id": user_b}}]}}]
    )
    assert both == sorted([user_a, user_b])
    assert user_a not in ids([{"notFilter": {"filter": {"userIdFilter": {"id": user_a}}}}])
    everything = call(client, issuer, "POST", SEARCH_PATH, iam, {}).json()
    assert all(k["userId"] != "" for k in everything["result"])
    assert int(everything["pagination"]["totalResult"]) == 4  # 3 users' keys + the iam user's
    bad = call(client, issuer, "POST", SEARCH_PATH, iam, {"filters": [{"nameFilter": {}}]})
    assert bad.status_code == 400


def test_permission_mode_filter_drops_unreadable_keys_silently(
    issuer: IssuerServer, client: httpx.Client, bearer: str
) -> None:
    user_b = service_user(issuer, ORG_B)
    issuer.key_api.permission_mode = "filter"
    doc = call(
        client, issuer, "POST", SEARCH_PATH, bearer, {"filters": [{"userIdFilter": {"id": user_b}}]}
    ).json()
    assert doc == {"pagination": {"totalResult": "0", "appliedLimit": "100"}, "result": []}


def test_pagination(issuer: IssuerServer, client: httpx.Client, bearer: str, clock: FakeClock) -> None:
    user = service_user(issuer)
    for _ in range(9):
        clock.advance(1)
        make_key_file(None, user_id=user, register_with=issuer)
    query = {"filters": [{"userIdFilter": {"id": user}}]}
    seen: list[str] = []
    for offset in range(0, 12, 4):
        page = call(
            client,
            issuer,
            "POST",
            SEARCH_PATH,
            bearer,
            {**query, "pagination": {"offset": str(offset), "limit": 4, "asc": True}},
        ).json()
        assert page["pagination"] == {"totalResult": "10", "appliedLimit": "4"}
        seen += [k["id"] for k in page["result"]]
    created = [
        k.key_id
        for k in sorted(
            (k for k in issuer.keys() if k.principal == user), key=lambda k: (k.created_at, k.key_id)
        )
    ]
    assert seen == created
    newest = call(client, issuer, "POST", SEARCH_PATH, bearer, {**query, "pagination": {"limit": 1}}).json()
    assert newest["result"][0]["id"] == created[-1]  # default: descending
    too_many = call(client, issuer, "POST", SEARCH_PATH, bearer, {**query, "pagination": {"limit": 1001}})
    assert too_many.status_code == 400


def test_faults_on_the_key_api(issuer: IssuerServer, client: httpx.Client, bearer: str) -> None:
    issuer.fault_paths = {SEARCH_PATH, "/v2/users/*"}
    issuer.fail_next(1, "pass")
    issuer.fail_next(1, "garbage")
    issuer.fail_next(1, "bad_page")
    issuer.fail_next(1, "503")
    results = [call(client, issuer, "POST", SEARCH_PATH, bearer, {}) for _ in range(5)]
    assert [r.status_code for r in results] == [200, 200, 200, 503, 200]
    assert results[1].text.startswith("<html>")
    assert "id" not in results[2].json()["result"][0]
    assert results[4].json()["result"]
