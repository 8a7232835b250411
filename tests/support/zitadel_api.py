"""ZITADEL's user service v2 key API for the test issuer (docs/zitadel.md §5).

``POST /v2/users/{userId}/keys`` (AddKey), ``POST /v2/users/keys/search``
(ListKeys) and ``DELETE /v2/users/{userId}/keys/{keyId}`` (RemoveKey),
shaped as ZITADEL's gRPC gateway answers them: camelCase JSON, uint64 as
decimal strings, timestamps RFC 3339 with ``Z``, errors as
``{"code": <gRPC code>, "message": ..., "details": [...]}``. ListKeys
follows ``zitadel.user.v2.ListKeysRequest``: ``pagination`` {offset, limit
(default 100, at most 1000), asc (default false: newest first)},
``sortingColumn`` (``KEY_FIELD_NAME_*``, default creation date), and
``filters`` of ``userIdFilter`` / ``organizationIdFilter`` / ``keyIdFilter``
(``{"id"}``) combined by ``andFilter`` / ``orFilter`` / ``notFilter``;
the answer is ``{"pagination": {"totalResult", "appliedLimit"}, "result":
[{id, userId, organizationId, creationDate, changeDate, expirationDate}]}``.
Only machine users' keys are listed (ZITADEL joins the machine-user table;
application keys have their own API).

Authorization as ZITADEL does it: a bearer access token issued by this
server, still valid, whose scope holds ``urn:zitadel:iam:org:project:id:
zitadel:aud``, of a user holding a role that grants ``user.write`` (add,
remove) or ``user.read`` (list) on the target user's organization (or on
the instance). No token: 401; otherwise lacking: 403; unknown user: 404.
A list filter naming an organization or a user the caller may not read is
403 here (``permission_mode = "deny"``); ZITADEL itself silently drops
keys the caller may not read, which ``permission_mode = "filter"`` imitates.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.issuer_oauth import SERVICE, RegisteredKey

if TYPE_CHECKING:
    from tests.support.issuer_oauth import Registry

API_SCOPE = "urn:zitadel:iam:org:project:id:zitadel:aud"
SEARCH_PATH = "/v2/users/keys/search"
DEFAULT_ORG = "100000000000000001"
NEVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
DEFAULT_LIMIT, MAX_LIMIT, MAX_DEPTH = 100, 1000, 20
ROLES = {  # ZITADEL's organization roles, reduced to the permissions this API checks
    "ORG_OWNER": {"user.read", "user.write", "user.delete"},
    "ORG_USER_MANAGER": {"user.read", "user.write", "user.delete"},
    "ORG_OWNER_VIEWER": {"user.read"},
    "ORG_USER_PERMISSION_EDITOR": set(),
    "IAM_OWNER": {"user.read", "user.write", "user.delete"},
}
GRPC = {400: 3, 401: 16, 403: 7, 404: 5}
SORT = {
    "KEY_FIELD_NAME_UNSPECIFIED": "created",
    "KEY_FIELD_NAME_CREATED_DATE": "created",
    "KEY_FIELD_NAME_ID": "key_id",
    "KEY_FIELD_NAME_USER_ID": "principal",
    "KEY_FIELD_NAME_ORGANIZATION_ID": "org",
    "KEY_FIELD_NAME_KEY_EXPIRATION_DATE": "expires",
}
KEYS_PATH = re.compile(r"^/v2/users/([^/]+)/keys(?:/([^/]+))?$")
Reply = tuple[int, str, bytes]


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail_id: str = "TEST-key-api") -> None:
        super().__init__(message)
        self.status, self.message, self.detail_id = status, message, detail_id


def stamp(instant: datetime) -> str:
    """protojson's Timestamp: UTC, ``Z``, fraction only when there is one."""
    return instant.astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"


def _reply(status: int, body: Any) -> Reply:
    return status, "application/json", json.dumps(body).encode()


def _error(exc: ApiError) -> Reply:
    detail = {
        "@type": "type.googleapis.com/zitadel.v1.ErrorDetail",
        "id": exc.detail_id,
        "message": exc.message,
    }
    return _reply(
        exc.status,
        {
            "code": GRPC.get(exc.status, 13),
            "message": f"{exc.message} ({exc.detail_id})",
            "details": [detail],
        },
    )


@dataclass(frozen=True)
class Caller:
    user_id: str
    scope: frozenset[str]


class KeyAPI:
    """The key API's state (organizations of users, role grants, creation
    dates) and handlers; the keys themselves live in the ``Registry``, so a
    key added here mints and a removed one stops minting."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.permission_mode = "deny"  # or "filter" (what ZITADEL does)
        self.calls: list[tuple[str, str]] = []  # (method, path) of every key-API call
        self._lock = threading.RLock()
        self._orgs: dict[str, str] = {}  # user id -> organization id
        self._grants: dict[str, set[tuple[str, str | None]]] = {}  # user -> {(role, org|None)}

    # -- set-up from tests ---------------------------------------------------
    def add_user(self, user_id: str, org: str = DEFAULT_ORG) -> None:
        """A machine user in ``org`` (users first seen by ``add_key`` are in
        ``DEFAULT_ORG``)."""
        self.registry.add_service_user(user_id)
        with self._lock:
            self._orgs[user_id] = org

    def grant(self, user_id: str, role: str, org: str | None = None) -> None:
        """Give ``user_id`` a role on ``org`` (None: on the whole instance)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {sorted(ROLES)}")
        with self._lock:
            self._grants.setdefault(user_id, set()).add((role, org))

    def revoke_grants(self, user_id: str) -> None:
        with self._lock:
            self._grants.pop(user_id, None)

    def org_of(self, user_id: str) -> str:
        with self._lock:
            return self._orgs.get(user_id, DEFAULT_ORG)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "orgs": dict(self._orgs),
                "grants": {u: sorted([r, o] for r, o in g) for u, g in self._grants.items()},
            }

    def load_state(self, state: dict[str, Any]) -> None:
        for user, org in state.get("orgs", {}).items():
            self.add_user(user, org)
        for user, grants in state.get("grants", {}).items():
            for role, org in grants:
                self.grant(user, role, org)

    # -- HTTP ------------------------------------------------------------------
    def handles(self, path: str) -> bool:
        return path == SEARCH_PATH or KEYS_PATH.match(path) is not None

    def respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            self.calls.append((method, path))
        try:
            caller = self._caller(headers)
            match = KEYS_PATH.match(path)
            if method == "POST" and path == SEARCH_PATH:
                return _reply(200, self._list(caller, _body(body)))
            if method == "POST" and match and match.group(2) is None:
                return _reply(201, self._add(caller, match.group(1), _body(body)))
            if method == "DELETE" and match and match.group(2) is not None:
                return _reply(200, self._remove(caller, match.group(1), match.group(2)))
            raise ApiError(404, f"Errors.NotFound: {method} {path}", "GATEWAY-404")
        except ApiError as exc:
            return _error(exc)

    def _caller(self, headers: dict[str, str]) -> Caller:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        kind, _, value = auth.partition(" ")
        if kind.lower() != "bearer" or not value.strip():
            raise ApiError(401, "auth header missing", "AUTH-7fs1e")
        record = self.registry.token(value.strip())
        if record is None or record.is_expired():
            raise ApiError(401, "Errors.Token.Invalid", "AUTH-7fs1e")
        return Caller(record.principal, frozenset(record.scope.split()))

    def allowed(self, caller: Caller, permission: str, org: str) -> bool:
        if API_SCOPE not in caller.scope:
            return False
        with self._lock:
            grants = self._grants.get(caller.user_id, set())
        return any(permission in ROLES[role] and scope in (None, org) for role, scope in grants)

    def _require(self, caller: Caller, permission: str, org: str) -> None:
        if not self.allowed(caller, permission, org):
            raise ApiError(403, "Errors.PermissionDenied", "AUTHZ-HdfG4")

    def _user(self, user_id: str) -> str:
        """The organization of a known machine user, else 404."""
        principal = self.registry.principal(user_id)
        if principal is None or principal.kind != SERVICE:
            raise ApiError(404, "Errors.User.NotFound", "QUERY-Dfbg2")
        return self.org_of(user_id)

    # -- AddKey / RemoveKey -----------------------------------------------------
    def _add(self, caller: Caller, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        org = self._user(user_id)
        self._require(caller, "user.write", org)
        expires = _timestamp(body.get("expirationDate"), "expirationDate") or NEVER
        if expires <= self.registry.now():
            raise ApiError(400, "Errors.AuthNKey.ExpireBeforeNow", "COMMAND-dv3t5")
        key_id = str(10**17 + secrets.randbelow(9 * 10**17))
        content = ""
        if body.get("publicKey"):
            public = _public_key(body["publicKey"])
        else:  # ZITADEL generates the pair and hands out the key file once
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = private.public_key()
            content = base64.b64encode(
                json.dumps(_key_file(private, key_id, user_id, expires)).encode()
            ).decode()
        self.registry.add_key(user_id, key_id, public, expires)
        created = self.registry.created_at(key_id)
        return {"keyId": key_id, "keyContent": content, "creationDate": stamp(created)}

    def _remove(self, caller: Caller, user_id: str, key_id: str) -> dict[str, Any]:
        org = self._user(user_id)
        self._require(caller, "user.write", org)
        key = next((k for k in self.registry.keys() if k.key_id == key_id), None)
        if key is not None and key.principal == user_id:
            self.registry.remove_key(key_id)
        return {"deletionDate": stamp(self.registry.now())}  # also when already gone

    # -- ListKeys ----------------------------------------------------------------
    def _list(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        offset, limit, asc = _pagination(body.get("pagination"))
        column = body.get("sortingColumn") or "KEY_FIELD_NAME_CREATED_DATE"
        if column not in SORT:
            raise ApiError(400, f"invalid sortingColumn {column!r}", "GRPC-sort")
        filters = body.get("filters") or []
        if not isinstance(filters, list):
            raise ApiError(400, "filters must be a list", "GRPC-vR9nC")
        self._check_filter_scope(caller, filters)
        rows = [(k, self.org_of(k.principal)) for k in self.registry.keys() if k.kind == SERVICE]
        rows = [
            r
            for r in rows
            if all(_match(f, *r, 0) for f in filters) and self.allowed(caller, "user.read", r[1])
        ]
        rows.sort(key=lambda r: (_sort_value(column, *r), r[0].key_id), reverse=not asc)
        page = rows[offset : offset + limit]
        return {
            "pagination": {"totalResult": str(len(rows)), "appliedLimit": str(limit)},
            "result": [self._key_json(k, org) for k, org in page],
        }

    def _check_filter_scope(self, caller: Caller, filters: list[Any]) -> None:
        """A plain organization/user filter the caller may not read is a 403
        in "deny" mode (ZITADEL would return the readable subset: nothing)."""
        if self.permission_mode != "deny":
            return
        if API_SCOPE not in caller.scope:
            raise ApiError(403, "Errors.PermissionDenied", "AUTHZ-HdfG4")
        for item in filters:
            if not isinstance(item, dict):
                continue
            if "organizationIdFilter" in item:
                self._require(caller, "user.read", str(_id_of(item["organizationIdFilter"])))
            if "userIdFilter" in item:
                self._require(caller, "user.read", self.org_of(str(_id_of(item["userIdFilter"]))))

    def _key_json(self, key: RegisteredKey, org: str) -> dict[str, Any]:
        created = self.registry.created_at(key.key_id)
        return {
            "id": key.key_id,
            "userId": key.principal,
            "organizationId": org,
            "creationDate": stamp(created),
            "changeDate": stamp(created),
            "expirationDate": stamp(key.expires_at or NEVER),
        }


def _body(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "invalid JSON body", "GATEWAY-json") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "body must be a JSON object", "GATEWAY-json")
    return doc


def _timestamp(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name}: invalid timestamp {value!r}", "GATEWAY-ts") from None
    if parsed.tzinfo is None:
        raise ApiError(400, f"{name}: timestamp without offset", "GATEWAY-ts")
    return parsed


def _public_key(value: object) -> Any:
    try:
        pem = base64.b64decode(str(value), validate=True)
        key = serialization.load_pem_public_key(pem)
    except (ValueError, binascii.Error, TypeError):
        raise ApiError(400, "Errors.User.Machine.Key.Invalid", "COMMAND-5KBYt") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return key
    raise ApiError(400, "Errors.User.Machine.Key.Invalid", "COMMAND-5KBYt")


def _key_file(private: rsa.RSAPrivateKey, key_id: str, user_id: str, expires: datetime) -> dict[str, str]:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return {"type": SERVICE, "keyId": key_id, "key": pem, "expirationDate": stamp(expires), "userId": user_id}


def _uint(value: object, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ApiError(400, f"pagination.{name}: invalid value {value!r}", "GATEWAY-int")
    return int(value)


def _pagination(value: object) -> tuple[int, int, bool]:
    page = value if isinstance(value, dict) else {}
    offset = _uint(page.get("offset"), "offset", 0)
    limit = _uint(page.get("limit"), "limit", 0) or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise ApiError(400, "Errors.Query.LimitExceeded", "QUERY-4M8Ks")
    return offset, limit, bool(page.get("asc", False))


def _id_of(spec: object) -> object:
    if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
        raise ApiError(400, "List.Query.Invalid: filter needs an id", "GRPC-vR9nC")
    return spec["id"]


def _match(spec: object, key: RegisteredKey, org: str, depth: int) -> bool:
    if depth > MAX_DEPTH:
        raise ApiError(400, "Errors.Query.TooManyNestingLevels", "USER-zsQ97")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ApiError(400, "List.Query.Invalid", "GRPC-vR9nC")
    ((kind, arg),) = spec.items()
    if kind == "userIdFilter":
        return key.principal == _id_of(arg)
    if kind == "organizationIdFilter":
        return org == _id_of(arg)
    if kind == "keyIdFilter":
        return key.key_id == _id_of(arg)
    subs = arg.get("filters") if isinstance(arg, dict) else None
    if kind in ("andFilter", "orFilter") and isinstance(subs, list):
        results = [_match(s, key, org, depth + 1) for s in subs]
        return all(results) if kind == "andFilter" else any(results)
    if kind == "notFilter" and isinstance(arg, dict):
        return not _match(arg.get("filter"), key, org, depth + 1)
    raise ApiError(400, "List.Query.Invalid", "GRPC-vR9nC")


def _sort_value(column: str, key: RegisteredKey, org: str) -> Any:
    field = SORT[column]
    if field == "created":
        return key.created_at
    if field == "expires":
        return key.expires_at or NEVER
    return org if field == "org" else getattr(key, field)


def make_api_user(
    issuer: Any,
    directory: Any = None,
    *,
    role: str | None = "ORG_USER_MANAGER",
    org: str | None = DEFAULT_ORG,
    home_org: str = DEFAULT_ORG,
) -> Any:
    """keyd's own service user: a machine user in ``home_org`` holding
    ``role`` on ``org`` (None: instance-wide), with a registered key whose
    file is written to ``directory`` (if given). Returns the ``MadeKey``."""
    from tests.support.keys import make_key_file

    made = make_key_file(directory, register_with=issuer, filename="keyd-api.json")
    issuer.key_api.add_user(made.principal, home_org)
    if role is not None:
        issuer.key_api.grant(made.principal, role, org)
    return made
