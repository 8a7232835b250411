"""Property: whatever the issuer answers (any status, any headers, any
body: JSON of any shape, huge numbers, control characters, surrogates,
NUL, junk labelled gzip), the client raises only keyd's own three
outcomes — rejected, unavailable, bad answer — or returns a token that
is safe to write (an RFC 6750 b64token with a finite lifetime)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyd.clients.issuer import B64TOKEN, MAX_EXPIRES_IN, IssuerClient
from keyd.clock import FakeClock
from keyd.errors import IssuerBadResponse, IssuerRejected, IssuerUnavailable
from keyd.redact import Secret

ISSUER = "https://zitadel.example"
DISCOVERY = {
    "issuer": ISSUER,
    "token_endpoint": f"{ISSUER}/oauth/v2/token",
    "introspection_endpoint": f"{ISSUER}/oauth/v2/introspect",
}
OUTCOMES = (IssuerRejected, IssuerUnavailable, IssuerBadResponse)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text()
    | st.sampled_from(["Bearer", "bearer", "0", "1" * 5000, "\udb37", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
token_docs = st.fixed_dictionaries(
    {},
    optional={
        "access_token": scalars | st.text(alphabet="ab\r\n =-", min_size=1),
        "token_type": scalars,
        "expires_in": scalars | st.integers(10**6, 10**40),
        "scope": scalars,
        "error": scalars,
        "error_description": scalars,
    },
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["content-type", "content-encoding", "date", "x-odd"]), header_values, max_size=3
)


def encode(doc: Any) -> bytes:
    try:
        return json.dumps(doc).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return b"{"


bodies = (
    token_docs.map(encode) | json_values.map(encode) | st.binary(max_size=300) | st.just(b"\x1f\x8bnot gzip")
)


def client(status: int, hdrs: dict[str, str], body: bytes, *, discovery: bytes | None = None) -> IssuerClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            if discovery is not None:
                return httpx.Response(status, headers=hdrs, content=discovery)
            return httpx.Response(200, json=DISCOVERY)
        return httpx.Response(status, headers=hdrs, content=body)

    return IssuerClient(ISSUER, clock=FakeClock(), transport=httpx.MockTransport(handler))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(status=st.integers(100, 599), hdrs=headers, body=bodies)
def test_token_answers_are_classified(status: int, hdrs: dict[str, str], body: bytes) -> None:
    with client(status, hdrs, body) as issuer:
        try:
            token = issuer.request_token(Secret("a.b.c"), ["openid"])
        except OUTCOMES:
            return
    assert B64TOKEN.fullmatch(token.access_token.reveal())
    assert 0 < token.expires_in <= MAX_EXPIRES_IN
    assert token.expires_at > token.issued_at  # representable: no overflow later


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(status=st.integers(100, 599), hdrs=headers, body=bodies)
def test_discovery_and_introspection_answers_are_classified(
    status: int, hdrs: dict[str, str], body: bytes
) -> None:
    with client(status, hdrs, body, discovery=body) as issuer:
        try:
            issuer.discover()
        except OUTCOMES:
            pass
    with client(status, hdrs, body) as issuer:
        try:
            issuer.introspect(Secret("a.b.c"))
        except OUTCOMES:
            pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(token=st.text(min_size=1, max_size=60), expires_in=st.integers(-5, 10**40) | st.text())
def test_a_well_formed_answer_with_odd_values(token: str, expires_in: int | str) -> None:
    """Success-shaped answers (200, Bearer) with any token text and any
    lifetime: CR/LF, NUL, surrogates and 10^40 s never get through."""
    body = encode({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
    test_token_answers_are_classified.hypothesis.inner_test(200, {}, body)  # type: ignore[attr-defined]
