"""Many issuer requests in flight on one thread (README "At scale", *Probes*).

Why: a probe round used to run ``issuer.concurrency`` worker threads, each
blocking on its own exchange. Every system call a worker makes (the key
file's open, read and close, the socket's poll, send and receive)
releases the GIL, and with eight workers runnable another one takes it:
measured at 13.7 context switches and 0.15-0.34 ms of kernel time per
probe, a third of a probe's CPU beyond the signature. One thread that
signs a request, writes it and goes on to the next while the issuer
answers keeps as many requests in flight with no hand-off at all.

``Multiplexer`` keeps non-blocking connections per origin (at most
``keep`` idle ones each), driven by one ``selectors`` selector, and is
used by one thread at a time. ``start`` sends one request, given as its
complete bytes (request line, headers, body), with its deadlines and a
callback; ``poll`` moves every connection as far as it can without
blocking, ends the exchanges whose deadline passed and calls their
callbacks, in the calling thread, after the I/O. The semantics are
``keyd.clients.pooled``'s:

* TLS verified by the given context (handshake without blocking, under
  the connect deadline);
* an idle connection the peer closed (or sent anything on) is not reused;
* the answer parsed by ``http.client`` (``pooled._Response``, over the
  bytes received once its head is complete): status line,
  ``100 Continue``, chunking, length and keep-alive rules are the
  standard library's; a connection whose answer says it closes, or that
  carried more than its answer, is closed;
* the total deadline covers connect, write and the whole answer, and
  connect (with the TLS handshake) has its own, shorter one;
* errors as httpx's types: ``ConnectTimeout``, ``ConnectError``,
  ``ReadTimeout``, ``ReadError``, ``WriteError``, ``RemoteProtocolError``;
  an answer over ``max_body`` bytes is ``BodyTooLarge``, read no further;
* no redirects, no retries, no decoding (``Completed.headers`` carries
  the ``Content-Encoding``).

A host name is resolved (``getaddrinfo``) in the calling thread when a
connection is opened, as ``http.client`` does; kept-alive connections
make that once per connection, not per request.
"""

from __future__ import annotations

import errno
import http.client
import io
import os
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
from urllib3.util.wait import wait_for_read

from keyd.clients.pooled import Headers, _mapped, _Response

MAX_HEAD: Final = 64 * 1024  # http.client's line limit; a token answer's head is ~300 bytes
RECV: Final = 64 * 1024
_CONNECTING, _HANDSHAKE, _SENDING, _RECEIVING = range(4)


@dataclass(frozen=True)
class Wire:
    """One request as it goes on the wire, with its limits."""

    url: httpx.URL  # its origin picks the connection
    data: bytes  # request line, headers and body
    timeout: float  # the total deadline, seconds
    connect_timeout: float
    max_body: int
    method: str = "POST"


@dataclass(frozen=True)
class Completed:
    """A whole answer."""

    status: int
    reason: str
    headers: Headers
    body: bytes  # as sent: still in its Content-Encoding


class BodyTooLarge(Exception):
    """The answer's body is longer than ``Wire.max_body``."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"answer body larger than {limit} bytes")
        self.status, self.limit = status, limit


Done = Callable[[Completed | Exception], None]
Origin = tuple[str, str, int]


class _Exchange:
    __slots__ = ("wire", "done", "deadline", "connect_by", "sent", "buf")

    def __init__(self, wire: Wire, done: Done, now: float) -> None:
        self.wire, self.done = wire, done
        self.deadline = now + wire.timeout
        self.connect_by = min(self.deadline, now + wire.connect_timeout)
        self.sent = 0
        self.buf = bytearray()


class _Conn:
    __slots__ = ("origin", "sock", "state", "exchange", "addresses", "events")

    def __init__(self, origin: Origin, sock: socket.socket, state: int) -> None:
        self.origin, self.sock, self.state = origin, sock, state
        self.events = 0  # what the selector watches it for (0: not registered)
        self.exchange: _Exchange | None = None
        self.addresses: list[tuple[int, Any]] = []


class _Partial(http.client.IncompleteRead):
    """A line of the answer's head or chunk framing is not all here yet."""

    def __init__(self) -> None:
        super().__init__(b"")


class _Reader(io.BytesIO):
    """The bytes received so far, as ``http.client`` reads them.

    Three differences from a socket's file: a line not yet ended by its
    ``\\n`` (and an empty read) raises ``_Partial`` unless the peer has
    closed, so a status line, header or chunk size split between two
    packets is never taken for a whole one; ``short`` records that a read
    wanted bytes not yet here (so an ``IncompleteRead`` that ``http.client``
    raises with every byte it wanted at hand, a chunk size that is not hex,
    is the peer's error, not a wait); and ``close`` does nothing, because
    ``http.client`` closes its file once the last chunk is read and the
    bytes after it (the next answer, or junk) are still to be counted.
    """

    def __init__(self, data: bytes, *, eof: bool) -> None:
        super().__init__(data)
        self.eof = eof
        self.short = False

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        if not self.eof and not line.endswith(b"\n") and (size is None or size < 0 or len(line) < size):
            self.short = True
            raise _Partial()
        return line

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and 0 <= size and len(data) < size:
            self.short = True
        return data

    def close(self) -> None:
        pass


class _Bytes:
    """What ``http.client.HTTPResponse`` reads an answer from."""

    __slots__ = ("reader",)

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader

    def makefile(self, mode: str) -> _Reader:
        return self.reader


class Multiplexer:
    """Exchanges in flight on non-blocking kept-alive connections (see the
    module docstring). Not thread-safe: one thread uses it at a time."""

    def __init__(self, *, ssl_context: ssl.SSLContext, keep: int = 8) -> None:
        self._ssl_context = ssl_context
        self._keep = keep
        self._selector = selectors.DefaultSelector()
        self._idle: dict[Origin, list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._finished: list[tuple[_Exchange, Completed | Exception]] = []
        self.opened = 0  # connections opened, for tests and the bench
        self._woken, self._waker = socket.socketpair()
        self._woken.setblocking(False)
        self._waker.setblocking(False)
        self._selector.register(self._woken, selectors.EVENT_READ, None)

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    @property
    def active(self) -> bool:
        """Exchanges in flight, or ended and not yet reported by ``poll``."""
        return bool(self._busy or self._finished)

    def start(self, wire: Wire, done: Done) -> None:
        """Send ``wire`` (on an idle connection to its origin, or a new one);
        ``done`` is called from a later ``poll`` with the ``Completed``
        answer or the httpx error it ended in."""
        exchange = _Exchange(wire, done, time.monotonic())
        try:
            conn = self._take(_origin(wire.url))
        except Exception as exc:  # noqa: BLE001 - name resolution, socket creation
            self._finished.append((exchange, _mapped(exc, None, None, phase="connect")))
            return
        conn.exchange = exchange
        self._busy.add(conn)
        if conn.state == _SENDING:
            self._send(conn)  # a kept-alive connection: the request goes out now
        else:
            self._connect(conn)

    def wake(self) -> None:
        """Make a ``poll`` waiting in another thread return now (thread-safe:
        work done elsewhere for the polling thread is ready)."""
        try:
            self._waker.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (None: until something happens, the
        nearest deadline or a ``wake``) for I/O, do it, end the overdue
        exchanges and call the callbacks of every exchange that ended."""
        if not self._finished:
            wait = timeout
            if self._busy:
                left = max(0.0, min(_due(c) for c in self._busy) - time.monotonic())
                wait = left if timeout is None else min(timeout, left)
            for key, events in self._selector.select(wait):
                conn: _Conn | None = key.data
                if conn is None:
                    self._drain_wakes()
                elif conn.exchange is not None:
                    self._step(conn, events)
            now = time.monotonic()
            for conn in [c for c in self._busy if _due(c) <= now]:
                self._expire(conn)
        finished, self._finished = self._finished, []
        for exchange, result in finished:
            exchange.done(result)

    def cancel(self) -> None:
        """Drop every exchange in flight (their connections closed, their
        callbacks never called) and every result not yet reported: what a
        caller that stops early leaves behind is not the next caller's."""
        for conn in list(self._busy):
            conn.exchange = None
            self._close(conn)
        self._busy.clear()
        self._finished.clear()

    def close(self) -> None:
        for conn in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            self._close(conn)
        self._busy.clear()
        self._idle.clear()
        self._selector.close()
        self._woken.close()
        self._waker.close()

    def _drain_wakes(self) -> None:
        try:
            while self._woken.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    # --- connections -----------------------------------------------------

    def _take(self, origin: Origin) -> _Conn:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if wait_for_read(conn.sock, timeout=0.0):
                self._close(conn)  # the peer closed it while idle (or sent junk): not usable
                continue
            return conn
        scheme, host, port = origin
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[tuple[int, Any]] = [(info[0], info[4]) for info in found]
        conn = self._open(origin, addresses)
        self.opened += 1
        return conn

    def _open(self, origin: Origin, addresses: list[tuple[int, Any]]) -> _Conn:
        family, _ = addresses[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(origin, sock, _CONNECTING)
        conn.addresses = addresses
        return conn

    def _connect(self, conn: _Conn) -> None:
        _, address = conn.addresses[0]
        code = conn.sock.connect_ex(address)
        if code in (0, errno.EISCONN):
            self._connected(conn)
        elif code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self._watch(conn, selectors.EVENT_WRITE)
        else:
            self._next_address(conn, OSError(code, os.strerror(code)))

    def _next_address(self, conn: _Conn, exc: OSError) -> None:
        """Connecting failed: try the name's next address, as ``socket.create_connection`` does."""
        rest = conn.addresses[1:]
        if not rest:
            self._fail(conn, _mapped(exc, None, None, phase="connect"))
            return
        self._unwatch(conn)
        conn.sock.close()
        fresh = self._open(conn.origin, rest)
        conn.sock, conn.addresses = fresh.sock, rest
        self._connect(conn)

    def _connected(self, conn: _Conn) -> None:
        if conn.origin[0] == "https":
            self._unwatch(conn)  # wrapping detaches the plain socket
            conn.sock = self._ssl_context.wrap_socket(
                conn.sock, server_hostname=conn.origin[1], do_handshake_on_connect=False
            )
            conn.state = _HANDSHAKE
            self._handshake(conn)
        else:
            conn.state = _SENDING
            self._send(conn)

    def _handshake(self, conn: _Conn) -> None:
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except OSError as exc:  # ssl.SSLError (verification) included
            self._fail(conn, _mapped(exc, None, None, phase="connect"))
            return
        conn.state = _SENDING
        self._send(conn)

    def _step(self, conn: _Conn, events: int) -> None:
        state = conn.state
        if state == _CONNECTING:
            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._next_address(conn, OSError(code, os.strerror(code)))
            else:
                self._connected(conn)
        elif state == _HANDSHAKE:
            self._handshake(conn)
        elif state == _SENDING:
            self._send(conn)
        else:
            self._receive(conn)

    # --- one exchange ----------------------------------------------------

    def _send(self, conn: _Conn) -> None:
        exchange = conn.exchange
        assert exchange is not None
        data = exchange.wire.data
        try:
            while exchange.sent < len(data):
                exchange.sent += conn.sock.send(data[exchange.sent :] if exchange.sent else data)
        except (BlockingIOError, ssl.SSLWantWriteError):
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except OSError as exc:
            self._fail(conn, _mapped(exc, None, None, phase="write"))
            return
        conn.state = _RECEIVING
        self._watch(conn, selectors.EVENT_READ)

    def _receive(self, conn: _Conn) -> None:
        exchange = conn.exchange
        assert exchange is not None
        sock = conn.sock
        try:
            chunk = sock.recv(RECV)
            while chunk and isinstance(sock, ssl.SSLSocket) and sock.pending():
                chunk += sock.recv(sock.pending())
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)  # renegotiation; receives again when writable
            conn.state = _SENDING
            return
        except OSError as exc:
            self._fail(conn, _mapped(exc, None, None, phase="read"))
            return
        exchange.buf += chunk
        self._frame(conn, exchange, eof=not chunk)

    def _frame(self, conn: _Conn, exchange: _Exchange, *, eof: bool) -> None:
        """End the exchange if ``exchange.buf`` holds its whole answer (or
        can never become one); otherwise wait for more."""
        buf = exchange.buf
        if not eof and buf.find(b"\n\r\n") < 0 and buf.find(b"\n\n") < 0:
            if not b"HTTP/".startswith(bytes(buf[:5])):  # as http.client would, without waiting
                line = bytes(buf[:64]).split(b"\n")[0]
                self._fail(conn, _mapped(http.client.BadStatusLine(repr(line)), None, None, phase="read"))
            elif len(buf) > MAX_HEAD:
                self._fail(conn, httpx.RemoteProtocolError(f"answer head longer than {MAX_HEAD} bytes"))
            return
        data = bytes(buf)
        reader = _Reader(data, eof=eof)
        response = _Response(_Bytes(reader), method=exchange.wire.method)  # type: ignore[arg-type]
        limit = exchange.wire.max_body
        try:
            response.begin()
            start = reader.tell()
            if len(data) - start > 2 * limit + 4096:  # chunk framing included
                raise BodyTooLarge(response.status, limit)
            if response.chunked:
                body = response.read()  # IncompleteRead until the last chunk and its trailer are here
                if len(body) > limit:
                    raise BodyTooLarge(response.status, limit)
                extra = data[reader.tell() :]
            elif response.length is not None:
                if response.length > limit:
                    raise BodyTooLarge(response.status, limit)
                if len(data) - start < response.length:
                    if eof:
                        raise http.client.IncompleteRead(data[start:], response.length - (len(data) - start))
                    return  # the body is on its way
                body, extra = data[start : start + response.length], data[start + response.length :]
            else:  # the body ends with the connection
                if len(data) - start > limit:
                    raise BodyTooLarge(response.status, limit)
                if not eof:
                    return
                body, extra = data[start:], b""
        except BodyTooLarge as exc:
            self._fail(conn, exc)
            return
        except (http.client.IncompleteRead, http.client.RemoteDisconnected) as exc:
            if isinstance(exc, http.client.IncompleteRead) and len(exc.partial) > limit:
                self._fail(conn, BodyTooLarge(response.status, limit))  # chunks beyond the limit so far
            elif eof or not reader.short:  # cut short, closed early, or framing that is wrong as it is
                self._fail(conn, _mapped(exc, None, None, phase="read"))
            return  # a line, a head after a 100 Continue, or a body, still on its way
        except Exception as exc:  # noqa: BLE001 - not an HTTP answer: mapped as pooled maps it
            self._fail(conn, _mapped(exc, None, None, phase="read"))
            return
        reusable = not (response.will_close or extra or eof)
        headers: Headers = response.headers  # type: ignore[assignment]
        self._end(conn, Completed(response.status, response.reason, headers, body), reusable=reusable)

    def _expire(self, conn: _Conn) -> None:
        exchange = conn.exchange
        assert exchange is not None
        if conn.state < _SENDING:
            self._fail(conn, httpx.ConnectTimeout(f"connect to {_where(conn.origin)} timed out"))
        else:
            self._fail(conn, httpx.ReadTimeout(f"no complete answer within {exchange.wire.timeout:g}s"))

    def _fail(self, conn: _Conn, exc: Exception) -> None:
        self._end(conn, exc, reusable=False)

    def _end(self, conn: _Conn, result: Completed | Exception, *, reusable: bool) -> None:
        exchange, conn.exchange = conn.exchange, None
        assert exchange is not None
        self._busy.discard(conn)
        self._unwatch(conn)
        idle = self._idle.setdefault(conn.origin, [])
        if reusable and len(idle) < self._keep:
            conn.state = _SENDING
            idle.append(conn)
        else:
            self._close(conn)
        self._finished.append((exchange, result))

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unwatch(self, conn: _Conn) -> None:
        if conn.events:
            conn.events = 0
            self._selector.unregister(conn.sock)

    def _close(self, conn: _Conn) -> None:
        self._unwatch(conn)
        try:
            conn.sock.close()
        except OSError:
            pass


def _due(conn: _Conn) -> float:
    """When ``conn``'s exchange times out: its connect deadline while
    connecting, else its total deadline."""
    exchange = conn.exchange
    if exchange is None:
        return 0.0
    return exchange.connect_by if conn.state < _SENDING else exchange.deadline


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
    return scheme, url.host, url.port or (443 if scheme == "https" else 80)


def _where(origin: Origin) -> str:
    return f"{origin[1]}:{origin[2]}"
