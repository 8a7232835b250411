"""Kept-alive HTTP/1.1 connections over ``http.client``, with keyd's total deadlines.

Why: a probe is one small POST on a kept-alive connection, and httpx +
httpcore + h11 spend about as much CPU on it as the RSA signature
(README "At scale", *Probes*); the standard library's ``http.client``
does the same exchange (request line, headers and body in one send; the
answer parsed by its own reader) with a third of the calls, and urllib3
adds back half of what it saves. This module only keeps connections
open and hands them to one request at a time; all HTTP parsing is
``http.client``'s.

``PooledTransport.send`` is what ``keyd.clients.issuer`` calls for a
request that goes to the issuer directly (a proxied one keeps httpx's
proxy transports); ``handle_request`` makes the same exchange an
``httpx.BaseTransport``. Either way:

* TLS verification with the ``ssl.SSLContext`` it is given (certifi or
  ``issuer.ca_bundle``, host names checked by the context);
* one pool per origin, at most ``max_connections`` idle connections
  kept; a connection the peer closed while idle is noticed before use and
  replaced; a half-read answer closes its connection;
* the total deadline of ``keyd.clients.deadline.within``: connect and
  read timeouts clamped to the time left, the body read as it arrives
  (``read1``) so the caller checks the deadline between chunks, and the
  watchdog shuts the socket down when the budget is spent (a peer that
  drips its status line or headers), raised as ``httpx.ReadTimeout``;
* errors as httpx's types: ``ConnectTimeout``, ``ConnectError``,
  ``ReadTimeout``, ``ReadError``, ``WriteError``, ``RemoteProtocolError``;
* no redirects, no retries (the probe has its own), no decoding: the
  caller decodes a ``Content-Encoding`` (``decoded``) as httpx would;
* the answer's header block read by ``http.client`` (its line and count
  limits), but split into fields by ``Headers`` rather than handed to
  ``email.parser``, which cost a third of a probe's HTTP exchange
  (README "At scale", *Probes*): ``_Response`` is ``HTTPResponse.begin``
  with only that step changed.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import httpx
from urllib3.util.wait import wait_for_read

from keyd.clients.deadline import Deadline, current, shutdown_socket

CHUNK = 64 * 1024
_IDENTITY = ("", "identity")


class Headers:
    """An answer's header fields, as ``http.client`` and keyd read them:
    ``get`` (case-insensitive, the first field of a name, as
    ``email.message.Message.get``), ``get_all``, ``items``, ``in``."""

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        first: dict[str, str] = {}
        for name, value in fields:
            first.setdefault(name.lower(), value)
        self._first = first

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def get_all(self, name: str, failobj: list[str] | None = None) -> list[str] | None:
        wanted = name.lower()
        return [v for n, v in self._fields if n.lower() == wanted] or failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, _ in self._fields])

    def __len__(self) -> int:
        return len(self._fields)


def parse_headers(lines: Iterable[bytes]) -> Headers:
    """The fields of a header block's raw lines (ISO-8859-1, as
    ``http.client``): ``name: value`` with the value's surrounding blanks
    dropped; an obsolete folded line (leading blank) continues the previous
    value after one space (RFC 9112 §5.2); a line without a colon is no
    field and is skipped."""
    fields: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if not line:
            continue
        if line[0] in " \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        if colon and name:
            fields.append((name, value.strip(" \t")))
    return Headers(fields)


class _Response(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` whose ``begin`` splits the header block
    with ``parse_headers`` instead of ``email.parser`` (the only change: the
    status line, ``100 Continue``, chunking, keep-alive and length rules
    are the standard library's, copied from its ``begin``)."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()  # type: ignore[attr-defined]
            if status != http.client.CONTINUE:
                break
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]  # the 100's headers
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = parse_headers(http.client._read_headers(self.fp))  # type: ignore[attr-defined,assignment]
        tr_enc = self.headers.get("transfer-encoding")
        self.chunked = bool(tr_enc and tr_enc.lower() == "chunked")
        self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if (
            status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
            or 100 <= status < 200
            or self._method == "HEAD"
        ):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


class Reply:
    """An answer whose body is still on the wire: read ``chunks()``, then
    ``close()`` (which returns the connection to its pool when the whole
    body was read)."""

    def __init__(
        self,
        response: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        origin: _Origin,
        deadline: Deadline | None,
        request: httpx.Request | None,
    ) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers  # case-insensitive .get()
        self._response = response
        self._conn: http.client.HTTPConnection | None = conn
        self._origin = origin
        self._deadline = deadline
        self._request = request
        self._complete = False

    def chunks(self) -> Iterator[bytes]:
        """The raw body, as it arrives."""
        response = self._response
        try:
            while chunk := response.read1(CHUNK):
                yield chunk
            if response.length:  # read1 ends quietly when the peer hangs up early
                raise http.client.IncompleteRead(b"", response.length)
        except Exception as exc:  # noqa: BLE001 - mapped to httpx's types, or re-raised
            raise _mapped(exc, self._deadline, self._request, phase="read") from exc
        self._complete = True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._complete or self._response.will_close:
            conn.close()  # cannot serve another request (http.client reopens it when asked)
        self._response.close()
        self._origin.give(conn)


class Answered(Protocol):
    """An answer's status and header fields (``Reply``, ``multiplex.Completed``)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Headers | http.client.HTTPMessage: ...


def decoded(reply: Answered, chunks: Iterable[bytes]) -> Iterable[bytes]:
    """``chunks`` decoded as the answer's ``Content-Encoding`` says, by
    httpx's decoders (gzip, deflate, br, zstd where installed); a body that
    is not what its label says raises ``httpx.DecodingError`` while read."""
    encoding = (reply.headers.get("content-encoding") or "").strip().lower()
    if encoding in _IDENTITY:
        return chunks
    wrapped = httpx.Response(reply.status, headers=[("content-encoding", encoding)], stream=_Chunks(chunks))
    return wrapped.iter_bytes()


class PooledTransport(httpx.BaseTransport):
    """Kept-alive connections per origin (see the module docstring)."""

    def __init__(self, *, ssl_context: ssl.SSLContext, max_connections: int = 10) -> None:
        self._ssl_context = ssl_context
        self._max = max_connections
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._lock = threading.Lock()

    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | None,
        timeout: Mapping[str, float | None],
        *,
        request: httpx.Request | None = None,
    ) -> Reply:
        """Send one request (``headers`` include ``Host`` and, with a body,
        ``Content-Length``) and read the answer's head."""
        deadline = current()
        connect = _clamped(deadline, timeout.get("connect"), httpx.ConnectTimeout, request)
        read = _clamped(deadline, timeout.get("read"), httpx.ReadTimeout, request)
        origin = self._origin(url)
        conn = origin.take()
        if deadline is not None:
            deadline.abort_on(lambda: shutdown_socket(conn.sock))
        phase = "connect"
        try:
            if conn.sock is None:
                conn.timeout = connect
                conn.connect()
            conn.sock.settimeout(read)
            phase = "write"
            conn.request(
                method,
                url.raw_path.decode("ascii"),
                body=body,
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
            )
            phase = "read"
            response = conn.getresponse()
        except Exception as exc:  # noqa: BLE001 - mapped to httpx's types, or re-raised
            conn.close()
            origin.give(conn)
            raise _mapped(exc, deadline, request, phase=phase) from exc
        return Reply(response, conn, origin, deadline, request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        reply = self.send(
            request.method,
            request.url,
            request.headers.raw,
            request.read() or None,
            request.extensions.get("timeout") or {},
            request=request,
        )
        return httpx.Response(
            reply.status,
            headers=reply.headers.items(),
            stream=_Chunks(reply.chunks(), reply.close),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reply.reason.encode("latin-1")},
            request=request,
        )

    def _origin(self, url: httpx.URL) -> _Origin:
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        origin = self._origins.get(key)
        if origin is None:
            with self._lock:
                origin = self._origins.setdefault(key, _Origin(*key, self._ssl_context, self._max))
        return origin

    def close(self) -> None:
        with self._lock:
            origins, self._origins = list(self._origins.values()), {}
        for origin in origins:
            origin.close()


class _Origin:
    """The idle connections to one scheme, host and port."""

    def __init__(self, scheme: str, host: str, port: int, ssl_context: ssl.SSLContext, keep: int) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self._ssl_context = ssl_context
        self._keep = keep
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if conn.sock is None or not wait_for_read(conn.sock, timeout=0.0):
                return conn  # closed (reconnects when used), or open and quiet
            conn.close()  # the peer closed it while idle (or sent junk): not usable
        fresh: http.client.HTTPConnection
        if self.scheme == "https":
            fresh = http.client.HTTPSConnection(self.host, self.port, context=self._ssl_context)
        else:
            fresh = http.client.HTTPConnection(self.host, self.port)
        fresh.response_class = _Response
        return fresh

    def give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: Iterable[bytes], close: object = None) -> None:
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        if callable(self._close):
            self._close()


def _clamped(
    deadline: Deadline | None,
    timeout: float | None,
    error: type[httpx.TimeoutException],
    request: httpx.Request | None,
) -> float | None:
    if deadline is None:
        return timeout
    try:
        return deadline.clamp(timeout)
    except TimeoutError as exc:
        raise error(str(exc), request=request) from None


def _mapped(
    exc: Exception, deadline: Deadline | None, request: httpx.Request | None, *, phase: str
) -> Exception:
    """``exc`` (a socket, TLS or ``http.client`` error) as the httpx error it means."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if deadline is not None and deadline.expired:  # the watchdog shut the socket down
        return httpx.ReadTimeout(f"no complete answer within {deadline.seconds:g}s", request=request)
    if isinstance(exc, TimeoutError):
        return (httpx.ConnectTimeout if phase == "connect" else httpx.ReadTimeout)(message, request=request)
    if phase == "connect" and isinstance(exc, OSError):  # refused, unreachable, TLS verification
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, http.client.HTTPException):  # not an HTTP answer, cut short, too many headers
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, OSError):
        return (httpx.WriteError if phase == "write" else httpx.ReadError)(message, request=request)
    return exc
