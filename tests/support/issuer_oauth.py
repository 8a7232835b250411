"""The test issuer's model and OAuth logic: ZITADEL's JWT-profile rules
(docs/zitadel.md §3) expressed through Authlib's RFC 7523 classes.

Token requests go through Authlib's ``JWTBearerGrant`` and introspection
through its ``IntrospectionEndpoint`` with ``JWTBearerClientAssertion``
(private_key_jwt), so keyd is tested against an independent verifier, not
its own code. Authlib's defaults are tightened where ZITADEL is stricter:
1 s leeway instead of 60 s, ``iat`` required and at most 1 h old, ``exp``
more than 1 s ahead, ``kid`` required, only RS256/ES256/PS256 (PS256 is off
in joserfc's default registry, hence the two ``process_assertion_claims``
overrides that pass ``algorithms``), keys looked up by (kid, iss) and alive
only while ``expiration > now``. The time comes from ``Registry.now``.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidGrantError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey

from keyd.clock import SystemClock

ALGORITHMS = ["RS256", "ES256", "PS256"]
LEEWAY = 1  # seconds; ZITADEL's offset (Authlib's default is 60)
MAX_IAT_AGE = 3600
ESSENTIAL = {"essential": True}
CLAIMS = {"iss": ESSENTIAL, "sub": ESSENTIAL, "exp": ESSENTIAL, "iat": ESSENTIAL}
SERVICE, APPLICATION = "serviceaccount", "application"
AUTH_METHOD = JWTBearerClientAssertion.CLIENT_AUTH_METHOD


@dataclass(frozen=True)
class Principal:
    """A service user (token grant) or an API application (introspection);
    implements the parts of Authlib's ``ClientMixin`` the flows call."""

    id: str
    kind: str

    def get_client_id(self) -> str:
        return self.id

    def check_grant_type(self, grant_type: str) -> bool:
        return self.kind == SERVICE and grant_type == JWTBearerGrant.GRANT_TYPE

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return self.kind == APPLICATION and method == AUTH_METHOD

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""


@dataclass(frozen=True)
class RegisteredKey:
    key_id: str
    principal: str
    kind: str
    public_pem: str
    expires_at: datetime | None
    jwk: Key
    created_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    principal: str
    key_id: str
    scope: str
    issued_at: int
    expires_at: int
    clock: Callable[[], datetime]

    def is_expired(self) -> bool:
        return self.expires_at <= self.clock().timestamp()

    def is_revoked(self) -> bool:
        return False


class FormRequest(OAuth2Request):
    """A decoded form POST; ``key_id`` is set once the assertion header is read."""

    def __init__(self, method: str, uri: str, headers: dict[str, str], form: dict[str, str]):
        super().__init__(method, uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)
        self.key_id: str | None = None

    @property
    def form(self) -> dict[str, str]:
        return self._form


def load_public_key(public_key: Any, key_id: str) -> tuple[str, Key]:
    """PEM (SubjectPublicKeyInfo) and joserfc key of a cryptography key object
    (public or private) or PEM text."""
    if isinstance(public_key, str | bytes):
        text = public_key.encode() if isinstance(public_key, str) else public_key
        public_key = serialization.load_pem_public_key(text)
    if isinstance(public_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_cls = RSAKey if isinstance(public_key, rsa.RSAPublicKey) else ECKey
    return pem.decode("ascii"), key_cls.import_key(pem, {"kid": key_id})


class Registry:
    """Principals, public keys and issued tokens; thread-safe. ``now`` may be
    replaced by any callable returning an aware datetime (e.g. ``FakeClock.now``)."""

    def __init__(self) -> None:
        self.now: Callable[[], datetime] = SystemClock().now
        self.token_lifetime = 43200
        self._lock = threading.RLock()
        self._principals: dict[str, Principal] = {}
        self._keys: dict[str, RegisteredKey] = {}  # ZITADEL key ids are unique
        self._tokens: dict[str, TokenRecord] = {}
        self.issued_tokens: list[str] = []
        self.tokens_by_key: Counter[str] = Counter()
        self.rejections: list[str] = []  # Authlib's reason for each rejection
        # OpenID Connect Core §9, as standards-strict servers apply it to
        # client assertions: a jti is required and never accepted twice
        self.strict_jti = False
        self.seen_jti: set[str] = set()

    def check_jti(self, claims: dict[str, Any], error: type[OAuth2Error]) -> None:
        if not self.strict_jti:
            return
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise error(description="jti is missing (OpenID Connect Core 9)")
        with self._lock:
            if jti in self.seen_jti:
                raise error(description="jti was used before")
            self.seen_jti.add(jti)

    def add_service_user(self, user_id: str) -> None:
        with self._lock:
            self._principals.setdefault(user_id, Principal(user_id, SERVICE))

    def add_key(
        self,
        principal: str,
        key_id: str,
        public_key: Any,
        expires_at: datetime | None = None,
        kind: str = SERVICE,
        created_at: datetime | None = None,
    ) -> None:
        """Register a public key (cryptography object or PEM; a private key is
        reduced to its public half) for ``principal``, creating it if new."""
        if kind not in (SERVICE, APPLICATION):
            raise ValueError(f"kind must be {SERVICE!r} or {APPLICATION!r}, not {kind!r}")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be an aware datetime")
        pem, jwk = load_public_key(public_key, key_id)
        with self._lock:
            self._principals.setdefault(principal, Principal(principal, kind))
            old = self._keys.get(key_id)
            created = created_at or (old.created_at if old is not None else self.now())
            self._keys[key_id] = RegisteredKey(key_id, principal, kind, pem, expires_at, jwk, created)

    def remove_key(self, key_id: str) -> None:
        """Forget a key; succeeds when it is already gone (as ZITADEL does)."""
        with self._lock:
            self._keys.pop(key_id, None)

    def created_at(self, key_id: str) -> datetime:
        with self._lock:
            return self._keys[key_id].created_at

    def set_token_lifetime(self, seconds: int) -> None:
        self.token_lifetime = int(seconds)

    def keys(self) -> list[RegisteredKey]:
        with self._lock:
            return list(self._keys.values())

    @property
    def tokens_issued(self) -> int:
        return len(self.issued_tokens)

    def principal(self, principal_id: object) -> Principal | None:
        return self._principals.get(principal_id) if isinstance(principal_id, str) else None

    def live_keys(self, principal: Principal) -> KeySet:
        """The keys ``kid`` may select for this ``iss``: strictly ``expiration > now``."""
        now = self.now()
        with self._lock:
            return KeySet(
                [
                    k.jwk
                    for k in self._keys.values()
                    if k.principal == principal.id and (k.expires_at is None or k.expires_at > now)
                ]
            )

    def record_token(self, token: dict[str, Any], request: FormRequest) -> None:
        issued = int(self.now().timestamp())
        record = TokenRecord(
            request.user.id,
            request.key_id or "",
            token.get("scope", ""),
            issued,
            issued + int(token["expires_in"]),
            lambda: self.now(),
        )
        with self._lock:
            self._tokens[token["access_token"]] = record
            self.issued_tokens.append(token["access_token"])
            self.tokens_by_key[record.key_id] += 1

    def token(self, value: str) -> TokenRecord | None:
        with self._lock:
            return self._tokens.get(value)


def verify_claims(
    claims: dict[str, Any], options: dict[str, Any], audience: str, now: datetime, error: type[OAuth2Error]
) -> None:
    """docs/zitadel.md §3 claim rules; raises ``error`` naming the broken rule."""
    ts = now.timestamp()
    registry = jwt.JWTClaimsRegistry(
        now=int(ts), leeway=LEEWAY, **options, aud={"essential": True, "values": [audience]}
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        claim = getattr(exc, "claim", "?")
        raise error(description=f"claim {claim}: {exc.description}") from exc
    if claims["iss"] != claims["sub"]:
        raise error(description="iss and sub differ")
    if claims["iat"] > ts + LEEWAY:
        raise error(description="iat is in the future")
    if claims["iat"] < ts - MAX_IAT_AGE:
        raise error(description="iat is more than 1 h old")
    if claims["exp"] <= ts + LEEWAY:
        raise error(description="exp is not more than 1 s in the future")


def check_header(headers: dict[str, Any], error: type[OAuth2Error]) -> None:
    if headers.get("alg") not in ALGORITHMS:
        raise error(description=f"alg {headers.get('alg')!r} is not accepted")
    if not isinstance(headers.get("kid"), str) or not headers["kid"]:
        raise error(description="kid is missing")


def decode(assertion: str, keys: KeySet, error: type[OAuth2Error]) -> dict[str, Any]:
    try:
        return dict(jwt.decode(assertion, keys, algorithms=ALGORITHMS).claims)
    except (JoseError, ValueError) as exc:
        raise error(description=f"signature or key: {exc}") from None


class ZitadelJWTBearerGrant(JWTBearerGrant):
    """RFC 7523 §2.1 grant with ZITADEL's rules; service users only."""

    CLAIMS_OPTIONS = CLAIMS
    LEEWAY = LEEWAY
    server: IssuerOAuth
    request: FormRequest

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, claims = super().extract_assertion(assertion)
        check_header(headers, InvalidGrantError)
        self.request.key_id = headers["kid"]
        return headers, claims

    def process_assertion_claims(self, assertion: str) -> dict[str, Any]:
        _, unverified = self.extract_assertion(assertion)
        client = self.resolve_issuer_client(unverified.get("iss"))
        if client is None:
            raise InvalidGrantError(description="unknown issuer")
        claims = decode(assertion, self.resolve_client_public_key(client), InvalidGrantError)
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        verify_claims(
            claims, self.CLAIMS_OPTIONS, self.server.issuer, self.server.registry.now(), InvalidGrantError
        )

    def get_audiences(self) -> list[str]:
        return [self.server.issuer]

    def resolve_issuer_client(self, issuer: object) -> Principal | None:
        return self.server.registry.principal(issuer)

    def resolve_client_public_key(self, client: Principal) -> KeySet:
        return self.server.registry.live_keys(client)

    def authenticate_user(self, subject: str) -> Principal | None:
        user = self.server.registry.principal(subject)
        return user if user is not None and user.kind == SERVICE else None

    def has_granted_permission(self, client: Principal, user: Principal) -> bool:
        return client.id == user.id  # a service user acts only for itself


class ZitadelClientAssertion(JWTBearerClientAssertion):
    """private_key_jwt for application keys, with the same rules; a jti is
    required only with ``strict_jti`` (ZITADEL ignores it)."""

    def __init__(self, server: IssuerOAuth) -> None:
        super().__init__(validate_jti=False, leeway=LEEWAY)
        self.server = server

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, claims = super().extract_assertion(assertion)
        check_header(headers, InvalidClientError)
        return headers, claims

    def process_assertion_claims(self, assertion: str, resolve_key: KeySet) -> dict[str, Any]:
        claims = decode(assertion, resolve_key, InvalidClientError)
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        verify_claims(claims, CLAIMS, self.server.issuer, self.server.registry.now(), InvalidClientError)
        self.server.registry.check_jti(claims, InvalidClientError)

    def get_audiences(self) -> list[str]:
        return [self.server.issuer]

    def resolve_client_public_key(self, client: Principal) -> KeySet:
        return self.server.registry.live_keys(client)


class ZitadelIntrospection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = [AUTH_METHOD]
    server: IssuerOAuth

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        return self.server.registry.token(token_string)

    def check_permission(self, token: TokenRecord, client: Principal, request: Any) -> bool:
        return True

    def introspect_token(self, token: TokenRecord) -> dict[str, Any]:
        return {
            "active": True,
            "sub": token.principal,
            "scope": token.scope,
            "iat": token.issued_at,
            "exp": token.expires_at,
            "token_type": "Bearer",
            "iss": self.server.issuer,
        }


class IssuerOAuth(AuthorizationServer):
    """Authlib's server wired to a ``Registry``; ``handle_response`` returns
    ``(status, body_dict, headers)`` for the HTTP layer to serialize."""

    def __init__(self, registry: Registry, issuer: str) -> None:
        super().__init__()
        self.registry, self.issuer = registry, issuer
        self.register_grant(ZitadelJWTBearerGrant)
        self.register_endpoint(ZitadelIntrospection)
        self.register_client_auth_method(AUTH_METHOD, ZitadelClientAssertion(self))
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: "zat_" + secrets.token_urlsafe(32),
                expires_generator=lambda client, grant_type: self.registry.token_lifetime,
            ),
        )

    def query_client(self, client_id: str) -> Principal | None:
        return self.registry.principal(client_id)

    def save_token(self, token: dict[str, Any], request: FormRequest) -> None:
        self.registry.record_token(token, request)

    def validate_requested_scope(self, scope: str | None) -> None:
        if "openid" not in (scope_to_list(scope) or []):
            raise InvalidScopeError(description="scope must include openid")

    def create_oauth2_request(self, request: FormRequest) -> FormRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[Any]) -> tuple[int, Any]:
        return status, body

    def handle_error_response(self, request: FormRequest, error: OAuth2Error) -> tuple[int, Any]:
        status, body, _ = error()
        with self.registry._lock:
            self.registry.rejections.append(f"{body['error']}: {body.get('error_description')}")
        return status, body
