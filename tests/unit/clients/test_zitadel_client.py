"""keyd/clients/zitadel.py against httpx.MockTransport: strict parsing,
errors naming call, user, key and organization, 401 retry, deadlines,
pagination that checks totalResult."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from keyd.clients.zitadel import SEARCH_PATH, ListedKey, ZitadelKeyAPI
from keyd.clock import FakeClock
from keyd.errors import (
    UsageError,
    ZitadelApiBadResponse,
    ZitadelApiDenied,
    ZitadelApiError,
    ZitadelApiNotFound,
    ZitadelApiPermanent,
    ZitadelApiRejected,
    ZitadelApiTransient,
    ZitadelApiUnavailable,
)
from keyd.redact import Secret

URL = "https://zitadel.example.com"
T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
Handler = Callable[[httpx.Request], httpx.Response]


class Tokens:
    principal = "300000000000000003"

    def __init__(self) -> None:
        self.issued = 0
        self.invalidated: list[Secret] = []

    def token(self) -> Secret:
        self.issued += 1
        return Secret(f"zat_{self.issued}")

    def invalidate(self, token: Secret) -> None:
        self.invalidated.append(token)


def api(handler: Handler, **kw: Any) -> tuple[ZitadelKeyAPI, Tokens]:
    tokens = Tokens()
    return ZitadelKeyAPI(
        URL, tokens, clock=FakeClock(T0), transport=httpx.MockTransport(handler), **kw
    ), tokens


def key_json(i: int, user: str = "1001", org: str = "9") -> dict[str, Any]:
    return {
        "id": str(5000 + i),
        "userId": user,
        "organizationId": org,
        "creationDate": "2026-01-01T00:00:00.123456789Z",
        "changeDate": "2026-01-01T00:00:00Z",
        "expirationDate": "9999-12-31T23:59:59Z",
    }


def pages(keys: list[dict[str, Any]], seen: list[dict[str, Any]]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        offset, limit = int(body["pagination"]["offset"]), body["pagination"]["limit"]
        return httpx.Response(
            200,
            json={
                "pagination": {"totalResult": str(len(keys)), "appliedLimit": str(limit)},
                "result": keys[offset : offset + limit],
            },
        )

    return handler


def test_list_pages_through_everything_with_zitadels_request_shape() -> None:
    seen: list[dict[str, Any]] = []
    client, tokens = api(pages([key_json(i) for i in range(7)], seen), page_size=3)
    keys = client.list_keys(organization_id="9")
    assert [k.key_id for k in keys] == [str(5000 + i) for i in range(7)]
    assert seen[0] == {
        "pagination": {"offset": "0", "limit": 3, "asc": True},
        "sortingColumn": "KEY_FIELD_NAME_CREATED_DATE",
        "filters": [{"organizationIdFilter": {"id": "9"}}],
    }
    assert [s["pagination"]["offset"] for s in seen] == ["0", "3", "6"]
    first = keys[0]
    assert first == ListedKey(
        "5000",
        "1001",
        "9",
        datetime(2026, 1, 1, 0, 0, 0, 123456, UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert first.never_expires
    with pytest.raises(AttributeError):
        first.key_id = "x"  # type: ignore[misc]
    assert client.list_keys(user_id="1001")[0].user_id == "1001"
    assert seen[-1]["filters"] == [{"userIdFilter": {"id": "1001"}}]


def test_empty_listing_and_integer_totals() -> None:
    client, _ = api(lambda r: httpx.Response(200, json={"pagination": {"totalResult": 0}}))
    assert client.list_keys(user_id="1") == []


def test_a_listing_that_shifts_is_retried_then_refused() -> None:
    keys = [key_json(i) for i in range(4)]
    calls = {"n": 0}

    def shifting(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        body = json.loads(request.content)
        offset = int(body["pagination"]["offset"])
        total = 4 if offset == 0 else 3  # a key was removed between the pages
        return httpx.Response(
            200, json={"pagination": {"totalResult": str(total)}, "result": keys[offset : offset + 2]}
        )

    client, _ = api(shifting, page_size=2)
    with pytest.raises(ZitadelApiBadResponse, match="kept changing.*totalResult moved") as info:
        client.list_keys(organization_id="9")
    assert isinstance(info.value, ZitadelApiTransient) and calls["n"] == 6
    assert info.value.call == "ListKeys" and info.value.organization_id == "9"


@pytest.mark.parametrize("case", ["duplicate", "short page"])
def test_duplicates_and_short_pages_are_not_a_complete_listing(case: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(json.loads(request.content)["pagination"]["offset"])
        result = [] if case == "short page" and offset else [key_json(0 if offset else 1)]
        if case == "duplicate":
            result = [key_json(0)]
        return httpx.Response(200, json={"pagination": {"totalResult": "3"}, "result": result})

    client, _ = api(handler, page_size=1)
    with pytest.raises(ZitadelApiBadResponse, match="twice|ended the listing"):
        client.list_keys(user_id="1001")


def test_too_many_keys_is_refused_before_paging() -> None:
    client, _ = api(
        lambda r: httpx.Response(200, json={"pagination": {"totalResult": "100001"}, "result": [key_json(0)]})
    )
    with pytest.raises(ZitadelApiRejected, match="100001 keys"):
        client.list_keys(organization_id="9")


BAD_ENTRIES = {
    "no id": {"id": None},
    "id with a slash": {"id": "1/../2"},
    "user of another query": {"userId": "666"},
    "creation not RFC 3339": {"creationDate": "yesterday"},
    "expiry missing": {"expirationDate": None},
    "expiry a number": {"expirationDate": 1780000000},
    "org not an id": {"organizationId": {"x": 1}},
}


@pytest.mark.parametrize("case", BAD_ENTRIES)
def test_entries_are_parsed_strictly(case: str) -> None:
    entry = {k: v for k, v in {**key_json(0), **BAD_ENTRIES[case]}.items() if v is not None}
    client, _ = api(
        lambda r: httpx.Response(200, json={"pagination": {"totalResult": "1"}, "result": [entry]})
    )
    with pytest.raises(ZitadelApiBadResponse) as info:
        client.list_keys(user_id="1001")
    assert info.value.user_id == "1001" and "ZITADEL ListKeys (user 1001)" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [b"<html><h1>nginx</h1></html>", b"[]", b'{"result": 5}', b'{"pagination": {"totalResult": "-1"}}'],
)
def test_garbage_pages(body: bytes) -> None:
    client, _ = api(lambda r: httpx.Response(200, content=body))
    with pytest.raises(ZitadelApiBadResponse):
        client.list_keys(user_id="1001")


def test_add_key_sends_base64_pem_and_parses_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201, json={"keyId": "777", "keyContent": "", "creationDate": "2026-06-01T12:00:00Z"}
        )

    client, _ = api(handler)
    added = client.add_key(
        "1001", "-----BEGIN PUBLIC KEY-----\nAA\n-----END PUBLIC KEY-----\n", datetime(2026, 9, 1, tzinfo=UTC)
    )
    assert (added.key_id, added.user_id, added.created_at) == ("777", "1001", T0)
    request = seen[0]
    assert request.url.path == "/v2/users/1001/keys"
    assert request.headers["authorization"] == "Bearer zat_1"
    body = json.loads(request.content)
    assert body["expirationDate"] == "2026-09-01T00:00:00Z"
    assert body["publicKey"].startswith("LS0tLS1CRUdJTiBQVUJMSUMgS0VZ")


def test_add_key_refuses_an_answer_with_key_material() -> None:
    client, _ = api(
        lambda r: httpx.Response(
            200, json={"keyId": "777", "keyContent": "eyJrZXkiOiAi", "creationDate": "2026-06-01T12:00:00Z"}
        )
    )
    with pytest.raises(ZitadelApiBadResponse, match="key material"):
        client.add_key("1001", b"pem", T0)


def grpc_error(status: int, message: str) -> Handler:
    return lambda r: httpx.Response(
        status,
        json={
            "code": 3,
            "message": f"{message} (COMMAND-x)",
            "details": [
                {"@type": "type.googleapis.com/zitadel.v1.ErrorDetail", "id": "COMMAND-x", "message": message}
            ],
        },
    )


def test_expire_before_now_is_a_permanent_rejection_naming_the_user() -> None:
    client, _ = api(grpc_error(400, "Errors.AuthNKey.ExpireBeforeNow"))
    with pytest.raises(ZitadelApiRejected) as info:
        client.add_key("1001", b"pem", T0)
    exc = info.value
    assert isinstance(exc, ZitadelApiPermanent) and not exc.retryable
    assert exc.zitadel_error == "Errors.AuthNKey.ExpireBeforeNow" and exc.status == 400
    assert str(exc) == ("ZITADEL AddKey (user 1001): refused (HTTP 400: Errors.AuthNKey.ExpireBeforeNow)")


def test_403_says_who_lacks_which_permission_where() -> None:
    client, _ = api(grpc_error(403, "Errors.PermissionDenied"))
    with pytest.raises(ZitadelApiDenied) as info:
        client.list_keys(organization_id="9")
    assert (
        "keyd's service user 300000000000000003 lacks user.read on organization 9" in str(info.value)
    ) and "ORG_USER_MANAGER" in str(info.value)
    with pytest.raises(
        ZitadelApiDenied, match="lacks user.write on the organization of user 1001.*ORG_USER_MANAGER"
    ):
        client.remove_key("1001", "777")


def test_401_gets_one_fresh_token_then_a_clear_message() -> None:
    statuses = [401, 200]
    client, tokens = api(lambda r: httpx.Response(statuses.pop(0), json={}))
    client.remove_key("1001", "777")
    assert tokens.invalidated == [Secret("zat_1")] and tokens.issued == 2
    client, tokens = api(grpc_error(401, "Errors.Token.Invalid"))
    with pytest.raises(ZitadelApiDenied, match="not authenticated.*rotation.credential"):
        client.remove_key("1001", "777")
    assert tokens.issued == 2


@pytest.mark.parametrize(
    "status,cls",
    [
        (404, ZitadelApiNotFound),
        (500, ZitadelApiUnavailable),
        (503, ZitadelApiUnavailable),
        (429, ZitadelApiUnavailable),
        (409, ZitadelApiRejected),
    ],
)
def test_status_classes(status: int, cls: type[ZitadelApiError]) -> None:
    client, _ = api(lambda r: httpx.Response(status, text="<html>oops</html>"))
    with pytest.raises(cls) as info:
        client.remove_key("1001", "777")
    assert info.value.key_id == "777" and info.value.call == "RemoveKey"
    assert "key 777" in str(info.value)


def test_transport_errors_and_timeouts_are_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out")

    for handler, text in [(refuse, "ConnectError"), (slow, "timed out")]:
        client, _ = api(handler)
        with pytest.raises(ZitadelApiUnavailable, match=text) as info:
            client.list_keys(user_id="1001")
        assert info.value.retryable


def test_total_deadline_bounds_a_dripping_answer() -> None:
    clock = FakeClock(T0)

    class Drip(httpx.SyncByteStream):
        def __iter__(self) -> Any:
            for _ in range(100):
                clock.advance(1)  # each chunk arrives a second later
                yield b" "

    client = ZitadelKeyAPI(
        URL,
        Tokens(),
        clock=clock,
        deadline=5,
        transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=Drip())),
    )
    with pytest.raises(ZitadelApiUnavailable, match="deadline 5s"):
        client.list_keys(user_id="1001")
    assert clock.monotonic() - 1000.0 <= 7


def test_token_failures_become_api_errors() -> None:
    from keyd.errors import IssuerRejected, IssuerUnavailable

    class Failing(Tokens):
        def __init__(self, exc: Exception) -> None:
            super().__init__()
            self.exc = exc

        def token(self) -> Secret:
            raise self.exc

    for exc, cls in [
        (IssuerUnavailable(URL, "down"), ZitadelApiUnavailable),
        (IssuerRejected(URL, "revoked"), ZitadelApiDenied),
    ]:
        client = ZitadelKeyAPI(
            URL,
            Failing(exc),
            clock=FakeClock(T0),
            transport=httpx.MockTransport(lambda r: httpx.Response(200)),
        )
        with pytest.raises(cls, match="cannot get an access token"):
            client.list_keys(user_id="1001")


@pytest.mark.parametrize("bad", ["", "1/2", "../x", "a b", "x" * 201])
def test_ids_are_checked_before_anything_is_sent(bad: str) -> None:
    client, tokens = api(lambda r: httpx.Response(200))
    with pytest.raises(UsageError):
        client.remove_key(bad, "1")
    with pytest.raises(UsageError):
        client.list_keys(user_id=bad)
    assert tokens.issued == 0


def test_exactly_one_list_filter() -> None:
    client, _ = api(lambda r: httpx.Response(200))
    with pytest.raises(UsageError):
        client.list_keys()
    with pytest.raises(UsageError):
        client.list_keys(user_id="1", organization_id="2")


def test_the_token_never_reaches_an_error_message() -> None:
    client, _ = api(lambda r: httpx.Response(500, json={"message": "Bearer zat_1 rejected"}))
    with pytest.raises(ZitadelApiUnavailable) as info:
        client.list_keys(user_id="1001")
    assert "zat_1" not in str(info.value) and "zat_1" not in repr(info.value.args)


def test_search_path_is_zitadels() -> None:
    assert SEARCH_PATH == "/v2/users/keys/search"
