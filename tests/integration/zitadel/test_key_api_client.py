"""keyd's key-API client and API token provider against the real test
server: keyd authenticates as its own service user from a key file, and
AddKey / ListKeys / RemoveKey have the effect ZITADEL gives them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from keyd.checks.apitoken import ApiTokenProvider
from keyd.checks.assertion import AssertionSigner
from keyd.checks.mint import mint
from keyd.clients.issuer import IssuerClient
from keyd.clients.zitadel import API_SCOPE, ZitadelKeyAPI
from keyd.clock import FakeClock
from keyd.errors import (
    ZitadelApiBadResponse,
    ZitadelApiDenied,
    ZitadelApiNotFound,
    ZitadelApiRejected,
    ZitadelApiUnavailable,
)
from keyd.sources.keyfile import parse_keyfile
from tests.support.issuer import IssuerServer
from tests.support.issuer_fixtures import T0
from tests.support.keys import make_key_file, private_pem, rfc3339, rsa_key
from tests.support.zitadel_api import DEFAULT_ORG, SEARCH_PATH, make_api_user

pytestmark = pytest.mark.issuer
ORG_B = "200000000000000002"


@pytest.fixture
def issuer_client(issuer: IssuerServer, clock: FakeClock) -> Iterator[IssuerClient]:
    with IssuerClient(issuer.url, clock=clock) as client:
        yield client


def connect(
    issuer: IssuerServer, issuer_client: IssuerClient, clock: FakeClock, credential: Path, **kw: object
) -> tuple[ZitadelKeyAPI, ApiTokenProvider]:
    tokens = ApiTokenProvider(credential, issuer_client, AssertionSigner(clock), clock)
    return ZitadelKeyAPI(issuer.url, tokens, clock=clock, deadline=5, **kw), tokens  # type: ignore[arg-type]


@pytest.fixture
def api(
    issuer: IssuerServer, issuer_client: IssuerClient, clock: FakeClock, tmp_path: Path
) -> Iterator[tuple[ZitadelKeyAPI, ApiTokenProvider]]:
    manager = make_api_user(issuer, tmp_path)
    assert manager.path is not None
    client, tokens = connect(issuer, issuer_client, clock, manager.path, page_size=3)
    with client:
        yield client, tokens


def service_user(issuer: IssuerServer, org: str = DEFAULT_ORG, keys: int = 1) -> str:
    user = make_key_file(None, register_with=issuer).principal
    issuer.key_api.add_user(user, org)
    for _ in range(keys - 1):
        make_key_file(None, user_id=user, register_with=issuer)
    return user


def test_add_mint_list_remove_round_trip(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider],
    issuer: IssuerServer,
    issuer_client: IssuerClient,
    clock: FakeClock,
) -> None:
    client, tokens = api
    user = service_user(issuer)
    private = rsa_key(fresh=True)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expires = T0 + timedelta(days=90)
    added = client.add_key(user, public, expires)
    assert added.created_at == T0 and added.expires_at == expires
    keyfile = parse_keyfile(
        json.dumps(
            {
                "type": "serviceaccount",
                "keyId": added.key_id,
                "userId": user,
                "expirationDate": rfc3339(expires),
                "key": private_pem(private),
            }
        ),
        source="new key",
    )
    # the new key mints through keyd's normal code
    assert mint(keyfile, issuer_client, AssertionSigner(clock), ["openid"]).access_token
    listed = {k.key_id: k for k in client.list_keys(user_id=user)}
    assert set(listed) == {added.key_id} | {
        k.key_id for k in issuer.keys() if k.principal == user and k.key_id != added.key_id
    }
    assert listed[added.key_id].expires_at == expires
    assert listed[added.key_id].organization_id == DEFAULT_ORG
    client.remove_key(user, added.key_id)
    client.remove_key(user, added.key_id)  # already gone: still fine
    assert added.key_id not in {k.key_id for k in client.list_keys(user_id=user)}
    assert tokens.mints == 1  # one access token served every call


def test_list_pages_an_organization_across_users(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider], issuer: IssuerServer
) -> None:
    client, _ = api
    users = [service_user(issuer, keys=3) for _ in range(3)]
    service_user(issuer, ORG_B)  # another organization: not listed
    before = issuer.key_api.calls.count(("POST", SEARCH_PATH))
    keys = client.list_keys(organization_id=DEFAULT_ORG)
    mine = [k for k in keys if k.user_id in users]
    assert len(mine) == 9 and len({k.key_id for k in keys}) == len(keys) == 10  # + keyd's own
    assert issuer.key_api.calls.count(("POST", SEARCH_PATH)) - before == 4  # ceil(10 / 3)
    assert [k.created_at for k in keys] == sorted(k.created_at for k in keys)


def test_expiry_in_the_past_is_expire_before_now(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider], issuer: IssuerServer
) -> None:
    client, _ = api
    user = service_user(issuer)
    public = (
        rsa_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ZitadelApiRejected) as info:
        client.add_key(user, public, T0 - timedelta(seconds=1))
    assert info.value.zitadel_error == "Errors.AuthNKey.ExpireBeforeNow"
    assert info.value.user_id == user
    with pytest.raises(ZitadelApiNotFound, match="AddKey .user 404404404"):
        client.add_key("404404404", public, T0 + timedelta(days=1))


def test_permission_errors_name_user_permission_and_organization(
    issuer: IssuerServer, issuer_client: IssuerClient, clock: FakeClock, tmp_path: Path
) -> None:
    viewer = make_api_user(issuer, tmp_path, role="ORG_OWNER_VIEWER")
    assert viewer.path is not None
    client, _ = connect(issuer, issuer_client, clock, viewer.path)
    user_b = service_user(issuer, ORG_B)
    with client:
        client.list_keys(organization_id=DEFAULT_ORG)  # reading is allowed
        with pytest.raises(ZitadelApiDenied) as info:
            client.list_keys(organization_id=ORG_B)
        with pytest.raises(ZitadelApiDenied, match=f"lacks user.write on the organization of user {user_b}"):
            client.remove_key(user_b, "1")
    assert str(info.value).startswith(
        f"ZITADEL ListKeys (organization {ORG_B}): keyd's service user {viewer.principal} "
        f"lacks user.read on organization {ORG_B} (HTTP 403)"
    )
    assert API_SCOPE in str(info.value)


def test_token_is_reused_until_two_thirds_of_its_lifetime(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider], issuer: IssuerServer, clock: FakeClock
) -> None:
    client, tokens = api
    issuer.set_token_lifetime(3000)
    user = service_user(issuer)
    client.list_keys(user_id=user)
    clock.advance(1999)
    client.list_keys(user_id=user)
    assert tokens.mints == 1
    clock.advance(2)  # 2001 s > 2/3 of 3000 s
    client.list_keys(user_id=user)
    assert tokens.mints == 2
    assert {a[1]["sub"] for a in issuer.assertions} == {tokens.principal}


def test_a_revoked_token_is_replaced_once(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider], issuer: IssuerServer
) -> None:
    client, tokens = api
    user = service_user(issuer)
    client.list_keys(user_id=user)
    with issuer._lock:
        issuer._tokens.clear()  # every access token forgotten: 401 until re-minted
    client.list_keys(user_id=user)
    assert tokens.mints == 2


def test_a_removed_credential_key_is_a_clear_denial(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider], issuer: IssuerServer
) -> None:
    client, tokens = api
    own = parse_keyfile(tokens.credential.read_text(), source="credential")
    issuer.remove_key(own.key_id)
    with pytest.raises(
        ZitadelApiDenied, match=f"cannot get an access token.*key {own.key_id} of {own.principal}"
    ):
        client.list_keys(user_id="1")


def test_missing_credential_file_is_named(
    issuer: IssuerServer, issuer_client: IssuerClient, clock: FakeClock, tmp_path: Path
) -> None:
    client, _ = connect(issuer, issuer_client, clock, tmp_path / "nope.json")
    with client, pytest.raises(ZitadelApiDenied, match="rotation.credential.*nope.json"):
        client.list_keys(user_id="1")


def test_faults_are_transient_errors(
    api: tuple[ZitadelKeyAPI, ApiTokenProvider], issuer: IssuerServer
) -> None:
    client, _ = api
    user = service_user(issuer, keys=7)
    issuer.fault_paths = {SEARCH_PATH}
    issuer.fail_next(1, "pass")
    issuer.fail_next(1, "garbage")  # the second page is an HTML error page
    with pytest.raises(ZitadelApiBadResponse, match="HTML"):
        client.list_keys(user_id=user)
    issuer.fail_next(1, "bad_page")
    with pytest.raises(ZitadelApiBadResponse):
        client.list_keys(user_id=user)
    issuer.fail_next(1, "503")
    with pytest.raises(ZitadelApiUnavailable, match="HTTP 503"):
        client.list_keys(user_id=user)
    issuer.hang_seconds = 10
    issuer.fail_next(1, "hang")
    with pytest.raises(ZitadelApiUnavailable, match="timed out"):
        client.list_keys(user_id=user)
    assert len(client.list_keys(user_id=user)) == 7


def test_key_api_for_builds_the_client_from_config(
    issuer: IssuerServer, issuer_client: IssuerClient, clock: FakeClock, tmp_path: Path
) -> None:
    from keyd.checks.apitoken import key_api_for
    from keyd.config import load_config
    from keyd.errors import ConfigError

    manager = make_api_user(issuer, tmp_path)
    toml = tmp_path / "keyd.toml"
    toml.write_text(f'[issuer]\nurl = "{issuer.url}"\n[rotation]\ncredential = "{manager.path}"\n')
    user = service_user(issuer, keys=2)
    with key_api_for(load_config(toml, {}), issuer_client, clock) as client:
        assert len(client.list_keys(user_id=user)) == 2
    toml.write_text(f'[issuer]\nurl = "{issuer.url}"\n')
    with pytest.raises(ConfigError, match="rotation.credential"):
        key_api_for(load_config(toml, {}), issuer_client, clock)
