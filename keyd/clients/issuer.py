"""The issuer's HTTP endpoints: discovery, token, introspection (docs/zitadel.md §4).

One long-lived ``httpx.Client`` (connection pooling, TLS verification on)
shared by all threads; requests are sent straight to its transport for
their URL (the pool, or the environment's proxy), built from parts fixed
per endpoint, without the client's per-request merging, cookie jar and
hooks: they cost a probe more CPU than its RSA signature. A probe round
sends its requests from one thread through ``multiplexer()``
(``keyd.clients.multiplex``; ``token_request`` / ``introspection_request``
build them, ``wire`` and ``conclude`` carry them there and back), every
other caller through ``send``, with the same checks either way.
``timeout`` is the *total* deadline of one request (connect + send + the
whole answer, ``keyd.clients.deadline``): an issuer
that drips its answer is cut off like one that hangs. Outcomes other than success are
typed (``keyd.errors``):

- a JSON OAuth error body, whatever the status → ``IssuerRejected``
  (older ZITADEL answers 500 ``server_error`` for an ordinary unknown key);
- connection errors, timeouts, 429 and 502/503/504 → ``IssuerUnavailable``;
- anything else unusable (HTML, no token, oversized) → ``IssuerBadResponse``.

Bodies are read with a size cap; remote text reaches messages only
scrubbed and truncated. Tokens and assertions are ``Secret`` throughout.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote_plus, urlsplit

import httpx

from keyd.clients.deadline import Deadline, deadline_client, within
from keyd.clients.multiplex import BodyTooLarge, Completed, Multiplexer, Wire
from keyd.clients.pooled import PooledTransport, decoded
from keyd.clock import Clock
from keyd.config import IssuerConfig
from keyd.errors import (
    IssuerBadResponse,
    IssuerDiscoveryRefused,
    IssuerRejected,
    IssuerUnavailable,
    UsageError,
)
from keyd.redact import Secret, scrub
from keyd.urls import check_issuer_url

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BODY = 256 * 1024
MAX_TOKEN = 16 * 1024
MAX_EXPIRES_IN = 10 * 366 * 86_400  # far beyond any issuer's token lifetime
#: RFC 6750 §2.1 b64token: what may follow "Bearer " in a header.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
UNAVAILABLE_STATUS = {429, 502, 503, 504}
USER_AGENT = "keyd"


@dataclass(frozen=True)
class Discovery:
    issuer: str
    token_endpoint: str
    introspection_endpoint: str | None
    jwks_uri: str | None


@dataclass(frozen=True)
class TokenResponse:
    access_token: Secret
    token_type: str
    expires_in: int
    scope: str | None
    issued_at: datetime

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(seconds=self.expires_in)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str
    date: str | None  # the Date header, parsed only when a rejection is diagnosed

    @property
    def server_date(self) -> datetime | None:
        return _parse_date(self.date)


@dataclass(frozen=True)
class Prepared(Generic[T]):
    """One token or introspection request (a POST of a form), ready to go
    out by either route: ``IssuerClient.send`` now, or ``wire`` into a
    ``Multiplexer`` and ``conclude`` with what it read. ``finish`` makes
    the checked answer into the result or the typed issuer error."""

    url: str
    what: str
    body: bytes
    finish: Callable[[_Answer], T]


@dataclass(frozen=True)
class _Route:
    url: httpx.URL
    transport: httpx.BaseTransport
    headers: tuple[tuple[bytes, bytes], ...]


_HEADERS = ((b"User-Agent", USER_AGENT.encode()), (b"Accept", b"application/json"))
_FORM_TYPE = (b"Content-Type", b"application/x-www-form-urlencoded")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what form encoding leaves as is


def _body_headers(body: bytes) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    return _FORM_TYPE, (b"Content-Length", str(len(body)).encode())


def form_encode(data: Mapping[str, str]) -> bytes:
    """``urlencode(data)``, without quoting what needs none (an assertion
    is base64url and dots)."""
    return "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in data.items()).encode("ascii")


def _quoted(value: str) -> str:
    known = _CONSTANTS.get(value)
    if known is not None:
        return known
    return value if _UNRESERVED.fullmatch(value) else quote_plus(value)


# the form's fixed names and values, quoted once (the grant and assertion
# types need quoting; quote_plus per probe cost more than the rest of the form)
_CONSTANTS = {
    v: quote_plus(v)
    for v in (
        "grant_type",
        GRANT_JWT_BEARER,
        "assertion",
        "scope",
        "openid",
        "client_assertion_type",
        CLIENT_ASSERTION_TYPE,
        "client_assertion",
        "token",
    )
}


def normalise_scopes(scopes: Sequence[str]) -> list[str]:
    """``openid`` first and always (docs/zitadel.md §4), duplicates dropped."""
    out = ["openid"]
    for scope in scopes:
        for part in scope.split():
            if part not in out:
                out.append(part)
    return out


class IssuerClient:
    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        timeout: float = 10.0,
        ca_bundle: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 16,
        allow_endpoints: Sequence[str] = (),
    ) -> None:
        try:
            self.url = check_issuer_url(url)
        except ValueError as exc:
            raise UsageError("issuer.url", str(exc)) from None
        self._origins = {_origin(self.url), *(_origin(u) for u in allow_endpoints)}
        self._clock = clock
        self._timeout = timeout
        verify = ssl_context(ca_bundle)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # trust_env: HTTP_PROXY / HTTPS_PROXY / ALL_PROXY with NO_PROXY, as
        # the Vault and webhook clients honour them (docs/daemon.md,
        # "Proxies"). httpx reads them once, here, not per request; proxied
        # requests keep the total deadline too (deadline_client) and go
        # through httpx's proxy transports; every other request through
        # ``self._direct``: http.client connections kept alive
        # (keyd.clients.pooled), or the transport a test passes.
        self._http = deadline_client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            verify=verify,
            transport=transport,
            follow_redirects=False,
            trust_env=True,
            limits=limits,
        )
        self._direct = transport or PooledTransport(ssl_context=verify, max_connections=max_connections)
        self._ssl_context, self._max_connections = verify, max_connections
        self._mux: Multiplexer | None = None
        self._mux_lock = threading.Lock()
        self._closed = False
        self._timeouts = self._http.timeout.as_dict()
        self._extensions = {"timeout": self._timeouts}
        self._routes: dict[str, _Route] = {}
        self._discovery: Discovery | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: IssuerConfig, clock: Clock, **kwargs: Any) -> IssuerClient:
        """The client ``[issuer]`` describes (URL, CA, deadline, allowed endpoints)."""
        return cls(
            cfg.url,
            clock=clock,
            ca_bundle=cfg.ca_bundle,
            timeout=cfg.timeout.total_seconds(),
            allow_endpoints=cfg.allow_endpoints,
            **kwargs,
        )

    def close(self) -> None:
        self._http.close()
        self._direct.close()
        self._closed = True
        if self._mux_lock.acquire(blocking=False):  # else the round using it closes it as it ends
            try:
                self._close_mux()
            finally:
                self._mux_lock.release()

    def _close_mux(self) -> None:
        if self._mux is not None:
            self._mux.close()
            self._mux = None

    def __enter__(self) -> IssuerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- discovery ---------------------------------------------------------

    def discover(self, *, refresh: bool = False) -> Discovery:
        with self._lock:
            if self._discovery is not None and not refresh:
                return self._discovery
        url = self.url.rstrip("/") + "/.well-known/openid-configuration"
        answer = self._send("GET", url, what="discovery")
        doc = self._json_object(answer, url, what="discovery document")
        if answer.status != 200 or "error" in doc:
            raise IssuerBadResponse(
                self.url, f"discovery at {url} answered HTTP {answer.status}", status=answer.status
            )
        discovery = Discovery(
            issuer=self._endpoint(doc, "issuer", url, required=True) or "",
            token_endpoint=self._endpoint(doc, "token_endpoint", url, required=True) or "",
            introspection_endpoint=self._endpoint(doc, "introspection_endpoint", url),
            jwks_uri=self._endpoint(doc, "jwks_uri", url),
        )
        self._trust(discovery, url)
        with self._lock:
            self._discovery = discovery
        return discovery

    def _trust(self, discovery: Discovery, url: str) -> None:
        """OpenID Discovery §4.3: the document's ``issuer`` is the URL keyd
        was configured with, byte for byte (it becomes the assertion's
        audience); endpoints that receive assertions share its origin
        unless ``issuer.allow_endpoints`` names theirs."""
        if discovery.issuer != self.url:
            raise IssuerDiscoveryRefused(
                self.url,
                f"discovery at {url} names issuer {scrub(discovery.issuer)[:200]!r}, "
                f"not the configured issuer.url {self.url!r} (they must be identical; fix "
                "issuer.url)",
            )
        for name in ("token_endpoint", "introspection_endpoint"):
            endpoint = getattr(discovery, name)
            if endpoint and _origin(endpoint) not in self._origins:
                raise IssuerDiscoveryRefused(
                    self.url,
                    f"discovery at {url} puts the {name} on another origin "
                    f"({scrub(endpoint)[:200]}): keyd sends no signed assertion there unless "
                    "issuer.allow_endpoints lists it",
                )

    def _endpoint(self, doc: Mapping[str, Any], name: str, url: str, *, required: bool = False) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise IssuerBadResponse(self.url, f"discovery document at {url} has no usable {name!r}")
        try:
            return check_issuer_url(value)
        except ValueError as exc:
            raise IssuerBadResponse(self.url, f"discovery document at {url}: {name} {exc}") from None

    # --- token & introspection ---------------------------------------------

    def request_token(self, assertion: Secret, scopes: Sequence[str]) -> TokenResponse:
        """JWT-bearer grant (RFC 7523 §2.1) with ``openid`` always included."""
        return self.send(self.token_request(assertion, scopes))

    def introspect(self, client_assertion: Secret, token: str = "keyd-probe") -> None:
        """Authenticate with a client assertion (application keys). Any
        well-formed answer proves the key; the token itself is irrelevant."""
        self.send(self.introspection_request(client_assertion, token))

    def token_request(self, assertion: Secret, scopes: Sequence[str]) -> Prepared[TokenResponse]:
        """``request_token``'s request, to ``send`` now or to run in a
        ``Multiplexer`` (``wire``, then ``conclude``)."""
        endpoint = self.discover().token_endpoint
        issued_at = self._clock.now()
        form = {
            "grant_type": GRANT_JWT_BEARER,
            "assertion": assertion.reveal(),
            "scope": " ".join(normalise_scopes(scopes)),
        }

        def finish(answer: _Answer) -> TokenResponse:
            doc = self._json_object(answer, endpoint, what="token response")
            self._raise_for_oauth_error(answer, doc, endpoint)
            if answer.status != 200:
                raise IssuerBadResponse(
                    self.url,
                    f"token endpoint {endpoint} answered HTTP {answer.status} without an OAuth error",
                    status=answer.status,
                )
            return self._token_from(doc, endpoint, issued_at)

        return Prepared(endpoint, "token request", form_encode(form), finish)

    def introspection_request(self, client_assertion: Secret, token: str = "keyd-probe") -> Prepared[None]:
        """``introspect``'s request (see ``token_request``)."""
        endpoint = self.discover().introspection_endpoint
        if not endpoint:
            raise IssuerBadResponse(self.url, "discovery has no introspection_endpoint")
        form = {
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": client_assertion.reveal(),
            "token": token,
        }

        def finish(answer: _Answer) -> None:
            doc = self._json_object(answer, endpoint, what="introspection response")
            self._raise_for_oauth_error(answer, doc, endpoint)
            if answer.status != 200 or not isinstance(doc.get("active"), bool):
                raise IssuerBadResponse(
                    self.url,
                    f"introspection at {endpoint} answered HTTP {answer.status} without an 'active' field",
                    status=answer.status,
                )

        return Prepared(endpoint, "introspection", form_encode(form), finish)

    def send(self, prepared: Prepared[T]) -> T:
        """Send ``prepared`` now, in this thread, and make of its answer what it asks."""
        return prepared.finish(self._send("POST", prepared.url, what=prepared.what, body=prepared.body))

    # --- one thread, many requests (keyd.clients.multiplex) ------------------

    @contextmanager
    def multiplexer(self) -> Iterator[Multiplexer | None]:
        """This client's ``Multiplexer`` for the calling thread, or None
        where requests cannot go through it: a transport passed in (tests),
        an endpoint behind a proxy, or another thread using it now (that
        caller sends in its own threads instead)."""
        try:
            discovery = self.discover()
        except (IssuerUnavailable, IssuerBadResponse, IssuerDiscoveryRefused):
            yield None  # each request finds that out again, and says so for its key
            return
        endpoints = [e for e in (discovery.token_endpoint, discovery.introspection_endpoint) if e]
        if not all(self._route(e).transport is self._direct for e in endpoints) or not isinstance(
            self._direct, PooledTransport
        ):
            yield None
            return
        if not self._mux_lock.acquire(blocking=False):
            yield None
            return
        try:
            if self._mux is None:
                self._mux = Multiplexer(ssl_context=self._ssl_context, keep=self._max_connections)
            yield self._mux
        finally:
            if self._closed:  # closed while this round ran
                self._close_mux()
            self._mux_lock.release()

    def wire(self, prepared: Prepared[Any]) -> Wire:
        """``prepared`` as the bytes ``http.client`` would send for it."""
        route = self._route(prepared.url)
        body = prepared.body
        head = [b"POST ", route.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in (*route.headers, *_body_headers(body)):
            head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        return Wire(
            route.url,
            b"".join(head),
            timeout=self._timeout,
            connect_timeout=self._timeouts.get("connect") or self._timeout,
            max_body=MAX_BODY,
        )

    def conclude(self, prepared: Prepared[T], result: Completed | Exception) -> T:
        """What ``send`` makes of an answer, for one a ``Multiplexer`` read
        (``result``: the answer, or the httpx error the exchange ended in):
        the same errors, the same checks."""
        url, what = prepared.url, prepared.what
        with self._issuer_errors(what, url):
            if isinstance(result, BodyTooLarge):
                raise IssuerBadResponse(
                    self.url, f"{what} at {url}: response larger than {MAX_BODY} bytes", status=result.status
                )
            if isinstance(result, Exception):
                raise result
            raw = self._read(decoded(result, (result.body,)), result.status, None, what, url)
        get = result.headers.get
        answer = _Answer(result.status, raw, get("content-type") or "", get("date"))
        return prepared.finish(self._checked(answer, "POST", url, what))

    # --- plumbing ----------------------------------------------------------

    def _send(self, method: str, url: str, *, what: str, body: bytes | None = None) -> _Answer:
        route = self._route(url)
        with self._issuer_errors(what, url):
            with within(self._timeout, f"{what} at {url}") as deadline:
                if isinstance(route.transport, PooledTransport):
                    answer = self._exchange(route, route.transport, method, body, deadline, what, url)
                else:
                    answer = self._exchange_httpx(route, method, body, deadline, what, url)
        return self._checked(answer, method, url, what)

    @contextmanager
    def _issuer_errors(self, what: str, url: str) -> Iterator[None]:
        """An exchange's httpx errors as keyd's issuer errors."""
        try:
            yield
        except (httpx.TimeoutException, TimeoutError):
            raise IssuerUnavailable(
                self.url, f"{what} at {url}: no complete answer within {self._timeout:g}s"
            ) from None
        except httpx.DecodingError:  # e.g. a gzip-labelled body that is not gzip
            raise IssuerBadResponse(
                self.url, f"{what} at {url}: the body cannot be decoded as its Content-Encoding says"
            ) from None
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(
                self.url, f"{what} at {url} failed: {type(exc).__name__}: {scrub(str(exc))[:200]}"
            ) from None

    def _checked(self, answer: _Answer, method: str, url: str, what: str) -> _Answer:
        log.debug("%s %s: HTTP %d", method, url, answer.status)  # what httpx's own debug line said
        if answer.status in UNAVAILABLE_STATUS:
            raise IssuerUnavailable(
                self.url, f"{what} at {url} answered HTTP {answer.status}", status=answer.status
            )
        return answer

    def _exchange(
        self,
        route: _Route,
        transport: PooledTransport,
        method: str,
        body: bytes | None,
        deadline: Deadline,
        what: str,
        url: str,
    ) -> _Answer:
        """The direct route: ``http.client`` over kept-alive connections
        (keyd.clients.pooled), without building httpx requests and responses."""
        headers = route.headers if body is None else (*route.headers, *_body_headers(body))
        reply = transport.send(method, route.url, headers, body, self._timeouts)
        try:
            raw = self._read(decoded(reply, reply.chunks()), reply.status, deadline, what, url)
        finally:
            reply.close()
        get = reply.headers.get
        return _Answer(reply.status, raw, get("content-type") or "", get("date"))

    def _exchange_httpx(
        self, route: _Route, method: str, body: bytes | None, deadline: Deadline, what: str, url: str
    ) -> _Answer:
        """Through an httpx transport (a proxy from the environment, or a test's)."""
        response = route.transport.handle_request(self._request(route, method, body))
        try:
            raw = self._read(response.iter_bytes(), response.status_code, deadline, what, url)
        finally:
            response.close()
        headers = response.headers
        return _Answer(response.status_code, raw, headers.get("content-type", ""), headers.get("date"))

    def _request(self, route: _Route, method: str, body: bytes | None) -> httpx.Request:
        """The request ``httpx.Client`` would send, built from the parts
        fixed per endpoint (``_Route``) instead of merging base URL,
        default headers and cookies per request (keyd's issuer exchange
        uses none of them)."""
        if body is None:
            return httpx.Request(method, route.url, headers=route.headers, extensions=self._extensions)
        headers = [*route.headers, *_body_headers(body)]
        return httpx.Request(
            method, route.url, headers=headers, stream=httpx.ByteStream(body), extensions=self._extensions
        )

    def _route(self, url: str) -> _Route:
        """``url`` parsed once, with its transport: the deadline pool, or
        the proxy the environment names for it (``trust_env``, read once)."""
        route = self._routes.get(url)
        if route is None:
            parsed = httpx.URL(url)
            headers = ((b"Host", parsed.netloc), *_HEADERS)
            transport = self._http._transport_for_url(parsed)
            if transport is self._http._transport:  # no proxy for this URL
                transport = self._direct
            route = self._routes[url] = _Route(parsed, transport, headers)
        return route

    def _read(
        self, chunks: Iterable[bytes], status: int, deadline: Deadline | None, what: str, url: str
    ) -> bytes:
        body = bytearray()
        for chunk in chunks:
            if deadline is not None:
                deadline.clamp(None)
            body.extend(chunk)
            if len(body) > MAX_BODY:
                raise IssuerBadResponse(
                    self.url, f"{what} at {url}: response larger than {MAX_BODY} bytes", status=status
                )
        return bytes(body)

    def _json_object(self, answer: _Answer, url: str, *, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(answer.body)
        except (ValueError, RecursionError):
            kind = "HTML" if b"<html" in answer.body[:512].lower() else "not JSON"
            raise IssuerBadResponse(
                self.url,
                f"{what} from {url} is {kind} (HTTP {answer.status}, {answer.content_type or 'no type'})",
                status=answer.status,
            ) from None
        if not isinstance(doc, dict):
            raise IssuerBadResponse(
                self.url,
                f"{what} from {url} is not a JSON object (HTTP {answer.status})",
                status=answer.status,
            )
        return doc

    def _raise_for_oauth_error(self, answer: _Answer, doc: Mapping[str, Any], url: str) -> None:
        error = doc.get("error")
        if error is None:
            return
        code = scrub(str(error))[:64]
        description = doc.get("error_description")
        detail = f": {scrub(str(description))[:200]}" if description else ""
        exc = IssuerRejected(
            self.url,
            f"the issuer rejected the key (HTTP {answer.status} {code}{detail})",
            status=answer.status,
            error_code=code,
            server_date=answer.server_date,
        )
        raise exc

    def _token_from(self, doc: Mapping[str, Any], url: str, issued_at: datetime) -> TokenResponse:
        token = doc.get("access_token")
        if not isinstance(token, str) or not token.strip():
            raise IssuerBadResponse(self.url, f"token response from {url} has no access_token")
        if len(token) > MAX_TOKEN or not B64TOKEN.fullmatch(token):
            # never written anywhere: CR/LF in a token file or a header is an injection
            raise IssuerBadResponse(
                self.url,
                f"token response from {url}: the access_token is "
                "not an RFC 6750 b64token (odd characters or oversized)",
            )
        token_type = doc.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise IssuerBadResponse(
                self.url,
                f"token response from {url} has token_type {scrub(str(token_type))[:20]!r}, expected Bearer",
            )
        expires_in = doc.get("expires_in")
        if (
            isinstance(expires_in, str)
            and expires_in.isascii()
            and expires_in.isdigit()
            and len(expires_in) <= 12
        ):
            expires_in = int(expires_in)
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
            raise IssuerBadResponse(self.url, f"token response from {url} has no positive expires_in")
        if expires_in > MAX_EXPIRES_IN:
            raise IssuerBadResponse(
                self.url,
                f"token response from {url} has expires_in "
                f"{str(expires_in)[:24]}, more than {MAX_EXPIRES_IN} s "
                "(10 years): not a token lifetime",
            )
        scope = doc.get("scope")
        return TokenResponse(
            access_token=Secret(token),
            token_type="Bearer",
            expires_in=expires_in,
            scope=scope if isinstance(scope, str) else None,
            issued_at=issued_at,
        )


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verification on: against ``ca_bundle``, else as httpx verifies by
    default (certifi's bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``)."""
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return httpx.create_ssl_context(verify=True, trust_env=True)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else None
