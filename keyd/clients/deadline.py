"""Total deadlines for network exchanges: connect + send + the whole answer.

A per-read timeout does not bound a request: a peer (or middlebox) that
drips one byte per second never trips a 10 s read timeout and holds the
caller for minutes. Every network call keyd makes therefore runs inside
``within(seconds, what)``, which sets a *total* budget for the exchange on
the calling thread; each client library honours it in one place:

* httpx (issuer, webhook, ZITADEL API): ``deadline_client()`` / ``deadline_transport()``: an
  ``httpx.HTTPTransport`` whose network streams clamp every connect, read
  and write to the time left and fail once it is spent
  (``DeadlineBackend``);
* requests/urllib3 (hvac, Vault): ``DeadlineSession`` runs every request
  under its own total deadline; its ``DeadlineAdapter`` registers each
  connection it uses, and the watchdog shuts that socket down when the
  budget is spent, waking a blocked read (raised as ``requests`` Timeout);
* smtplib: the SMTP client registers its socket the same way (``abort_on``).

``Deadline.expired`` tells the caller's error mapping that a failure was
the deadline (a timeout), not the peer's fault.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class Deadline:
    """A total budget of ``seconds`` for one exchange named ``what``."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.at = time.monotonic() + seconds
        self._expired = False
        self._aborts: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        """The budget is spent: fired by the watchdog, or simply past. A
        socket timeout clamped to the time left ends at the deadline too,
        possibly before the watchdog thread has run (a loaded machine), and
        must be told apart from the peer's own failure all the same."""
        return self._expired or time.monotonic() >= self.at

    def clamp(self, timeout: float | None) -> float:
        """``timeout`` cut to the time left; raises ``TimeoutError`` when none is."""
        left = self.remaining()
        if left <= 0:
            self._expired = True
            raise TimeoutError(f"{self.what}: no complete answer within {self.seconds:g}s")
        return left if timeout is None else min(timeout, left)

    def abort_on(self, abort: Callable[[], None]) -> None:
        """Call ``abort`` (e.g. shut a socket down) when the budget is spent."""
        with self._lock:
            fire = self.expired
            if not fire:
                self._aborts.append(abort)
        if fire:
            _quietly(abort)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            aborts, self._aborts = self._aborts, []
        for abort in aborts:
            _quietly(abort)


def current() -> Deadline | None:
    """The innermost deadline of the calling thread, if any."""
    stack: list[Deadline] = getattr(_local, "stack", [])
    return stack[-1] if stack else None


@contextmanager
def within(seconds: float, what: str) -> Iterator[Deadline]:
    """Run the block under a total deadline (nested: the tighter one wins)."""
    outer = current()
    if outer is not None and outer.remaining() < seconds:
        seconds = max(outer.remaining(), 0.0)
    deadline = Deadline(seconds, what)
    stack: list[Deadline] = _local.__dict__.setdefault("stack", [])
    stack.append(deadline)
    ticket = _WATCHDOG.watch(deadline)
    try:
        yield deadline
    finally:
        _WATCHDOG.cancel(ticket)
        stack.pop()


def shutdown_socket(sock: socket.socket | None) -> None:
    """Wake any thread blocked on ``sock`` (the watchdog's abort)."""
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _quietly(abort: Callable[[], None]) -> None:
    try:
        abort()
    except (OSError, AttributeError, ValueError):
        pass  # already closed: nothing left to wake


class _Watchdog:
    """One daemon thread firing spent deadlines in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> int:
        ticket = next(self._ids)
        with self._cond:
            # the thread sleeps until the earliest entry (spent or cancelled
            # ones included); only a new earliest one needs to wake it, so a
            # stream of requests with one timeout costs no thread switch each
            earliest = not self._heap or deadline.at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.at, ticket, deadline))
            self._live.add(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="keyd-deadlines", daemon=True)
                self._thread.start()
            if earliest:
                self._cond.notify()
        return ticket

    def cancel(self, ticket: int) -> None:
        with self._cond:
            self._live.discard(ticket)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                at, ticket, deadline = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(ticket)
            deadline._expire()


_WATCHDOG = _Watchdog()


# --- httpx / httpcore ---------------------------------------------------------


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, _clamped(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend with every socket operation clamped to the
    calling thread's deadline (``within``)."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _clamped(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, _clamped(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _clamped(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = current()
    if deadline is None:
        return timeout
    try:
        return deadline.clamp(timeout)
    except TimeoutError as exc:
        raise error(str(exc)) from None


def deadline_transport(**kwargs: Any) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` (same arguments) that honours ``within``.
    httpx does not expose httpcore's ``network_backend``; the pool it built
    gets ours (tests/unit/clients/test_deadline.py fails if httpx moves it)."""
    return _bound(httpx.HTTPTransport(**kwargs))


def _bound(transport: httpx.HTTPTransport) -> httpx.HTTPTransport:
    pool = transport._pool
    assert isinstance(pool, httpcore.ConnectionPool)
    pool._network_backend = DeadlineBackend()
    return transport


def deadline_client(
    *,
    transport: httpx.BaseTransport | None = None,
    verify: Any = True,
    limits: httpx.Limits | None = None,
    trust_env: bool = True,
    **kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` (same arguments) whose requests honour ``within``,
    including those it sends through a proxy from the environment
    (``trust_env``); ``transport`` replaces the default one (tests)."""
    # httpx ignores the environment's proxies when given a transport, so it
    # builds its own (and one per proxy), and each gets the deadline backend
    client = httpx.Client(
        transport=transport, verify=verify, limits=limits or httpx.Limits(), trust_env=trust_env, **kwargs
    )
    for built in (client._transport, *client._mounts.values()):
        if isinstance(built, httpx.HTTPTransport):
            _bound(built)
    return client


# --- requests / urllib3 --------------------------------------------------------


class _WatchedConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_connection(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_connection(self)
        super().request(*args, **kwargs)


def _watch_connection(conn: HTTPConnection) -> None:
    deadline = current()
    if deadline is not None:
        deadline.clamp(None)
        deadline.abort_on(lambda: shutdown_socket(conn.sock))


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """A requests adapter whose connections are shut down by the watchdog
    when the calling thread's deadline (``within``) is spent."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}


class DeadlineSession(requests.Session):
    """A ``requests.Session`` in which every request, body included, has
    a total deadline of ``total`` seconds (mount ``DeadlineAdapter``s)."""

    def __init__(self, total: float, *, pool_maxsize: int = 10) -> None:
        super().__init__()
        self.total = total
        adapter = DeadlineAdapter(pool_connections=1, pool_maxsize=pool_maxsize)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        *args: Any,
        **kwargs: Any,
    ) -> requests.Response:
        with within(self.total, f"{method} request") as deadline:
            try:
                return super().request(method, url, *args, **kwargs)
            except (requests.RequestException, OSError) as exc:
                if deadline.expired:
                    raise requests.exceptions.Timeout(f"no complete answer within {self.total:g}s") from exc
                raise
