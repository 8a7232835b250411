"""ZITADEL's user service v2 key API (docs/zitadel.md §5): AddKey with a
caller-supplied public key, ListKeys (filtered, paginated, bounded) and
RemoveKey, as keyd's own service user.

The access token comes from a ``TokenSource`` (``keyd.checks.apitoken``
mints it with keyd's JWT-bearer code); on a 401 the token is dropped and
the call retried once with a fresh one. Every request has a total deadline
(connect + send + every chunk of the answer), not only per-operation
timeouts, so a server dripping bytes cannot hold a caller forever.

Answers are parsed strictly into frozen value types. Every failure is a
``ZitadelApiError`` naming the call, the user, the key and, for ListKeys,
the organization: ``ZitadelApiTransient`` (unreachable, timeout, 429/5xx,
a garbled answer, a listing that changed while it was paged) or
``ZitadelApiPermanent`` (401/403 as one message saying which user lacks
which permission on which organization, 404, 400 such as
``Errors.AuthNKey.ExpireBeforeNow``).

ListKeys pages with ``pagination`` {offset, limit, asc: true} sorted by
creation date and checks ``pagination.totalResult`` on every page: a total
that moves, a key seen twice or a short listing restarts the listing (at
most ``LIST_ATTEMPTS`` times), because a key skipped by a shifting offset
would look removed. Only machine users' keys are listed; application keys
have their own API and are not covered.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from keyd.clients.deadline import deadline_client, within
from keyd.clock import Clock
from keyd.errors import (
    KeydError,
    UsageError,
    ZitadelApiBadResponse,
    ZitadelApiDenied,
    ZitadelApiError,
    ZitadelApiNotFound,
    ZitadelApiRejected,
    ZitadelApiUnavailable,
)
from keyd.redact import REDACTED, Secret, scrub
from keyd.timeutil import isoformat_z, parse_rfc3339
from keyd.urls import check_issuer_url

API_SCOPE = "urn:zitadel:iam:org:project:id:zitadel:aud"
API_SCOPES = ("openid", API_SCOPE)
SEARCH_PATH = "/v2/users/keys/search"
MAX_BODY = 4 << 20  # a page of 1,000 keys is ~250 KB
MAX_PAGE = 1000  # ZITADEL's default maximum limit
LIST_ATTEMPTS = 3
UNAVAILABLE_STATUS = {408, 425, 429}
NEVER_YEAR = 9999
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
PERMISSION = {"AddKey": "user.write", "RemoveKey": "user.write", "ListKeys": "user.read"}


class TokenSource(Protocol):
    """An access token of keyd's own service user for ZITADEL's API."""

    @property
    def principal(self) -> str: ...

    def token(self) -> Secret: ...

    def invalidate(self, token: Secret) -> None: ...


@dataclass(frozen=True)
class ListedKey:
    """A key as ListKeys names it: metadata only, never key material."""

    key_id: str
    user_id: str
    organization_id: str | None
    created_at: datetime
    expires_at: datetime  # 9999-12-31T23:59:59Z: never expires
    changed_at: datetime | None = None

    @property
    def never_expires(self) -> bool:
        return self.expires_at.year >= NEVER_YEAR


@dataclass(frozen=True)
class AddedKey:
    key_id: str
    user_id: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class _Call:
    name: str  # AddKey, ListKeys, RemoveKey
    user_id: str | None = None
    key_id: str | None = None
    organization_id: str | None = None

    def error(
        self,
        cls: type[ZitadelApiError],
        problem: str,
        *,
        status: int | None = None,
        zitadel_error: str | None = None,
    ) -> ZitadelApiError:
        return cls(
            self.name,
            problem,
            user_id=self.user_id,
            key_id=self.key_id,
            organization_id=self.organization_id,
            status=status,
            zitadel_error=zitadel_error,
        )


class ZitadelKeyAPI:
    """One pooled ``httpx.Client`` against ``base_url`` (issuer.url);
    thread-safe."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        *,
        clock: Clock,
        timeout: float = 10.0,
        deadline: float = 30.0,
        page_size: int = 100,
        max_keys: int = 100_000,
        ca_bundle: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 4,
    ) -> None:
        try:
            self.url = check_issuer_url(base_url).rstrip("/")
        except ValueError as exc:
            raise UsageError("issuer.url", str(exc)) from None
        if not 1 <= page_size <= MAX_PAGE:
            raise UsageError("page_size", f"{page_size} is not between 1 and {MAX_PAGE}")
        self.tokens, self.deadline = tokens, deadline
        self.page_size, self.max_keys = page_size, max_keys
        self._clock = clock
        verify: Any = str(ca_bundle) if ca_bundle else True
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # the deadline also bounds a status line and headers dripped byte by byte
        self._http = deadline_client(
            timeout=httpx.Timeout(min(timeout, deadline), connect=min(timeout, deadline, 5.0)),
            verify=verify,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            limits=limits,
            headers={"User-Agent": "keyd", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ZitadelKeyAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the three calls -----------------------------------------------------

    def add_key(self, user_id: str, public_key_pem: str | bytes, expires_at: datetime) -> AddedKey:
        """Register a public key (PEM, SubjectPublicKeyInfo) for ``user_id``;
        ZITADEL never sees the private key, and answers an empty keyContent."""
        call = _Call("AddKey", user_id=_check_id(user_id, "user id"))
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        body = {"expirationDate": isoformat_z(expires_at), "publicKey": base64.b64encode(pem).decode("ascii")}
        doc = self._call(call, "POST", f"/v2/users/{user_id}/keys", body)
        key_id = _string(doc, "keyId", call)
        if doc.get("keyContent") not in (None, ""):
            raise call.error(
                ZitadelApiBadResponse, "the answer carries key material although keyd supplied the public key"
            )
        return AddedKey(
            key_id=_check_answer_id(key_id, "keyId", call),
            user_id=user_id,
            created_at=_time(doc, "creationDate", call),
            expires_at=expires_at,
        )

    def remove_key(self, user_id: str, key_id: str) -> None:
        """Remove a key; succeeds when it is already gone (as ZITADEL does)."""
        call = _Call("RemoveKey", user_id=_check_id(user_id, "user id"), key_id=_check_id(key_id, "key id"))
        self._call(call, "DELETE", f"/v2/users/{user_id}/keys/{key_id}", None)

    def list_keys(self, *, user_id: str | None = None, organization_id: str | None = None) -> list[ListedKey]:
        """Every key of a user or an organization (exactly one of the two)."""
        return list(self.iter_keys(user_id=user_id, organization_id=organization_id))

    def iter_keys(
        self, *, user_id: str | None = None, organization_id: str | None = None
    ) -> Iterator[ListedKey]:
        """As ``list_keys``, yielding after the whole listing was checked
        (ids are held to detect a shifting listing; the keys themselves
        are yielded from the held pages)."""
        if (user_id is None) == (organization_id is None):
            raise UsageError("ListKeys", "name exactly one of user_id and organization_id")
        call = _Call(
            "ListKeys",
            user_id=None if user_id is None else _check_id(user_id, "user id"),
            organization_id=None
            if organization_id is None
            else _check_id(organization_id, "organization id"),
        )
        filters = (
            [{"userIdFilter": {"id": user_id}}]
            if user_id is not None
            else [{"organizationIdFilter": {"id": organization_id}}]
        )
        problem = ""
        for _ in range(LIST_ATTEMPTS):
            keys, problem = self._list_once(call, filters)
            if keys is not None:
                return iter(keys)
        raise call.error(
            ZitadelApiBadResponse,
            f"the listing kept changing while it was paged ({problem}); tried {LIST_ATTEMPTS} times",
        )

    def _list_once(self, call: _Call, filters: list[dict[str, Any]]) -> tuple[list[ListedKey] | None, str]:
        keys: list[ListedKey] = []
        seen: set[str] = set()
        total: int | None = None
        while total is None or len(keys) < total:
            body = {
                "pagination": {"offset": str(len(keys)), "limit": self.page_size, "asc": True},
                "sortingColumn": "KEY_FIELD_NAME_CREATED_DATE",
                "filters": filters,
            }
            doc = self._call(call, "POST", SEARCH_PATH, body)
            page_total, page = _page(doc, call)
            if total is None:
                if page_total > self.max_keys:
                    raise call.error(
                        ZitadelApiRejected,
                        f"{page_total} keys are more than the "
                        f"{self.max_keys} keyd lists in one source; narrow it",
                    )
                total = page_total
            elif page_total != total:
                return None, f"totalResult moved from {total} to {page_total}"
            if not page and len(keys) < total:
                return None, f"a page ended the listing at {len(keys)} of {total} keys"
            for key in page:
                if key.key_id in seen:
                    return None, f"key {key.key_id} was listed twice"
                seen.add(key.key_id)
                keys.append(key)
        return (keys, "") if len(keys) == total else (None, "more keys than totalResult")

    # --- plumbing --------------------------------------------------------------

    def _call(self, call: _Call, method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        for attempt in (1, 2):
            token = self._token(call)
            status, raw = self._send(call, method, path, body, token)
            if status == 401 and attempt == 1:
                self.tokens.invalidate(token)  # revoked or expired early: one fresh try
                continue
            return self._answer(call, status, raw)
        raise AssertionError("unreachable")

    def _token(self, call: _Call) -> Secret:
        try:
            return self.tokens.token()
        except ZitadelApiError:
            raise
        except KeydError as exc:
            cls = ZitadelApiUnavailable if exc.retryable else ZitadelApiDenied
            raise call.error(
                cls, f"keyd's service user {self.tokens.principal} cannot get an access token: {exc}"
            ) from None

    def _send(
        self, call: _Call, method: str, path: str, body: Mapping[str, Any] | None, token: Secret
    ) -> tuple[int, bytes]:
        url = self.url + path
        headers = {"Authorization": f"Bearer {token.reveal()}"}
        content = None if body is None else json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        end = self._clock.monotonic() + self.deadline
        try:
            with (
                within(self.deadline, f"{method} {url}"),
                self._http.stream(method, url, headers=headers, content=content) as response,
            ):
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw.extend(chunk)
                    if len(raw) > MAX_BODY:
                        raise call.error(
                            ZitadelApiBadResponse, f"{method} {url}: answer larger than {MAX_BODY} bytes"
                        )
                    if self._clock.monotonic() > end:
                        raise httpx.ReadTimeout("total deadline")
                # an echoed token never reaches a message (opaque tokens escape scrub())
                return response.status_code, bytes(raw).replace(token.reveal().encode(), REDACTED.encode())
        except (httpx.TimeoutException, TimeoutError):
            raise call.error(
                ZitadelApiUnavailable, f"{method} {url} timed out (deadline {self.deadline:g}s)"
            ) from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise call.error(
                ZitadelApiUnavailable, f"{method} {url} failed: {type(exc).__name__}: {scrub(str(exc))[:200]}"
            ) from None

    def _answer(self, call: _Call, status: int, raw: bytes) -> dict[str, Any]:
        doc = {} if call.name == "RemoveKey" and not raw.strip() else _json_object(raw)
        if 200 <= status < 300:
            if doc is None:
                kind = "HTML" if b"<html" in raw[:512].lower() else "not a JSON object"
                raise call.error(
                    ZitadelApiBadResponse, f"the answer (HTTP {status}) is {kind}", status=status
                )
            return doc
        code = _zitadel_error(doc)
        detail = f": {code}" if code else ""
        if status >= 500 or status in UNAVAILABLE_STATUS:
            raise call.error(
                ZitadelApiUnavailable,
                f"ZITADEL unavailable (HTTP {status}{detail})",
                status=status,
                zitadel_error=code,
            )
        if status in (401, 403):
            raise call.error(ZitadelApiDenied, self._denied(call, status), status=status, zitadel_error=code)
        if status == 404:
            raise call.error(
                ZitadelApiNotFound,
                f"no such machine user (HTTP 404{detail})",
                status=status,
                zitadel_error=code,
            )
        raise call.error(
            ZitadelApiRejected, f"refused (HTTP {status}{detail})", status=status, zitadel_error=code
        )

    def _denied(self, call: _Call, status: int) -> str:
        permission = PERMISSION[call.name]
        where = (
            f"organization {call.organization_id}"
            if call.organization_id
            else f"the organization of user {call.user_id}"
        )
        role = "ORG_USER_MANAGER" if permission == "user.write" else "ORG_USER_MANAGER or ORG_OWNER_VIEWER"
        if status == 401:
            return (
                f"keyd's service user {self.tokens.principal} is not authenticated (HTTP "
                f"401): its access token was refused twice; check rotation.credential"
            )
        return (
            f"keyd's service user {self.tokens.principal} lacks {permission} on {where} "
            f"(HTTP 403): grant it a role such as {role} there, and its token needs the "
            f"scope {API_SCOPE}"
        )


# --- strict parsing ------------------------------------------------------------


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise UsageError(what, f"{scrub(str(value))[:60]!r} is not a ZITADEL id")
    return value


def _check_answer_id(value: str, name: str, call: _Call) -> str:
    if not _ID_RE.match(value):
        raise call.error(ZitadelApiBadResponse, f"{name} {scrub(value)[:60]!r} is not an id")
    return value


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _zitadel_error(doc: Mapping[str, Any] | None) -> str | None:
    """``Errors.AuthNKey.ExpireBeforeNow`` from a gRPC-gateway error body."""
    if doc is None:
        return None
    details = doc.get("details")
    if isinstance(details, list) and details and isinstance(details[0], dict):
        message = details[0].get("message")
        if isinstance(message, str) and message:
            return scrub(message)[:120]
    message = doc.get("message")
    return scrub(message)[:120] if isinstance(message, str) and message else None


def _string(doc: Mapping[str, Any], name: str, call: _Call) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise call.error(ZitadelApiBadResponse, f"the answer has no string {name!r}")
    return value


def _time(doc: Mapping[str, Any], name: str, call: _Call) -> datetime:
    value = doc.get(name)
    try:
        if isinstance(value, str):
            return parse_rfc3339(value)
    except ValueError:
        pass
    raise call.error(ZitadelApiBadResponse, f"{name} {scrub(str(value))[:40]!r} is not an RFC 3339 timestamp")


def _optional_time(doc: Mapping[str, Any], name: str, call: _Call) -> datetime | None:
    return None if doc.get(name) is None else _time(doc, name, call)


def _uint(value: object, name: str, call: _Call) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise call.error(ZitadelApiBadResponse, f"{name} {scrub(str(value))[:40]!r} is not a count")


def _page(doc: Mapping[str, Any], call: _Call) -> tuple[int, list[ListedKey]]:
    pagination = doc.get("pagination")
    if not isinstance(pagination, dict):
        raise call.error(ZitadelApiBadResponse, "the answer has no pagination object")
    total = _uint(pagination.get("totalResult", 0), "pagination.totalResult", call)
    result = doc.get("result", [])
    if not isinstance(result, list):
        raise call.error(ZitadelApiBadResponse, "result is not a list")
    return total, [_listed(item, call) for item in result]


def _listed(item: object, call: _Call) -> ListedKey:
    if not isinstance(item, dict):
        raise call.error(ZitadelApiBadResponse, "a result entry is not an object")
    key_id = _check_answer_id(_string(item, "id", call), "id", call)
    user_id = _check_answer_id(_string(item, "userId", call), "userId", call)
    if call.user_id is not None and user_id != call.user_id:
        raise call.error(
            ZitadelApiBadResponse, f"key {key_id} of user {user_id} answered a query for user {call.user_id}"
        )
    org = item.get("organizationId")
    if org is not None and not (isinstance(org, str) and _ID_RE.match(org)):
        raise call.error(ZitadelApiBadResponse, f"key {key_id}: organizationId is not an id")
    if call.organization_id is not None and org not in (None, call.organization_id):
        raise call.error(
            ZitadelApiBadResponse,
            f"key {key_id} of organization {org} answered a query for organization {call.organization_id}",
        )
    return ListedKey(
        key_id=key_id,
        user_id=user_id,
        organization_id=org,
        created_at=_time(item, "creationDate", call),
        expires_at=_time(item, "expirationDate", call),
        changed_at=_optional_time(item, "changeDate", call),
    )
