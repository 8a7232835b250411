"""keyd.clients.multiplex against real loopback peers: a scripted peer that
answers each request with given bytes, in given pieces (a pause between
them, so each arrives in its own segment), on kept-alive connections, and
the TLS-wrapped test issuer. Asserts what came back and what happened on
the wire (connections opened, reused), never a duration.

The answers split at every byte are the regression for three defects the
first multiplexer had: a chunked answer failed with ``AttributeError``
(``http.client`` drops its file after the last chunk), a line split
between two segments (a status line after ``100 Continue``, a chunk size,
the final CRLF) was taken for the whole line, and an answer that was not
HTTP was refused only at the deadline."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from keyd.clients.issuer import ssl_context
from keyd.clients.multiplex import BodyTooLarge, Completed, Multiplexer, Wire
from tests.support.issuer import DISCOVERY_PATH, tls_issuer

PAUSE = 0.03  # between the pieces of one answer: each goes out in its own segment
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
CONTINUED = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Peer:
    """Accepts connections and answers each request on them (keep-alive)
    with the next script from ``scripts``: a sequence of byte pieces sent
    ``PAUSE`` apart; after the last script a connection is held open.
    ``then``: what the peer does after sending a script: ``read`` the next
    request, ``hold`` the connection open without reading (the answer is
    all it will ever send), or ``close`` it."""

    def __init__(self, scripts: Sequence[Sequence[bytes]], *, then: str = "read") -> None:
        self.scripts = list(scripts)
        self.then = then
        self.accepted = 0
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # accept wakes to see the stop (closing does not wake it)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next(self) -> Sequence[bytes] | None:
        with self._lock:
            return self.scripts.pop(0) if self.scripts else None

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(0.2)
        buf = b""
        with conn:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        if self._stop.is_set():
                            return
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
                length = next((int(v) for k, v in fields if k.lower() == b"content-length"), 0)
                buf = buf[length:]
                script = self._next()
                if script is None:
                    self._stop.wait()
                    return
                try:
                    for i, piece in enumerate(script):
                        if i:
                            time.sleep(PAUSE)
                        conn.sendall(piece)
                except OSError:
                    return
                if self.then == "hold":
                    self._stop.wait()
                    return
                if self.then == "close":
                    return

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.sock.close()


def wire(url: str, *, timeout: float = 10.0, max_body: int = 1 << 20, method: str = "POST") -> Wire:
    parsed = httpx.URL(url)
    body = b"grant_type=x" if method == "POST" else b""
    data = (
        f"{method} {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.netloc.decode()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    connect = min(timeout, 5.0)
    return Wire(parsed, data, timeout, connect, max_body, method)


def exchange(mux: Multiplexer, *wires: Wire) -> list[Completed | Exception]:
    """Start every wire at once and poll until all have ended."""
    results: dict[int, Completed | Exception] = {}
    for i, w in enumerate(wires):
        mux.start(w, lambda result, i=i: results.__setitem__(i, result))  # type: ignore[misc]
    while len(results) < len(wires):
        mux.poll(1.0)
    assert not mux.active and mux.in_flight == 0
    return [results[i] for i in range(len(wires))]


@pytest.fixture
def mux() -> Iterator[Multiplexer]:
    m = Multiplexer(ssl_context=ssl_context(None))
    yield m
    m.close()


def splits(answer: bytes) -> list[tuple[bytes, bytes]]:
    return [(answer[:i], answer[i:]) for i in range(1, len(answer))]


@pytest.mark.parametrize("answer", [CHUNKED, CONTINUED, LENGTH], ids=["chunked", "100-continue", "length"])
def test_an_answer_reads_whole_and_keeps_its_connection(mux: Multiplexer, answer: bytes) -> None:
    with Peer([[answer], [answer]]) as peer:
        first, second = exchange(mux, wire(peer.url + "/t")), exchange(mux, wire(peer.url + "/t"))
    for result in (*first, *second):
        assert isinstance(result, Completed), result
        assert result.status == 200 and result.body == b"{}"
    assert peer.accepted == 1 and mux.opened == 1  # the second request went out on the first's connection


@pytest.mark.parametrize("answer", [CHUNKED, CONTINUED, LENGTH], ids=["chunked", "100-continue", "length"])
def test_an_answer_split_at_any_byte_reads_the_same(mux: Multiplexer, answer: bytes) -> None:
    """Every split of the answer into two segments, in turn on one
    connection: a partial status line, header, chunk size or final CRLF is
    waited for, never taken for the whole."""
    cases = splits(answer)
    with Peer(cases) as peer:
        for case in cases:
            (result,) = exchange(mux, wire(peer.url + "/t"))
            assert isinstance(result, Completed), (case, result)
            assert (result.status, result.body) == (200, b"{}"), case
    assert peer.accepted == 1 and mux.opened == 1  # each answer ended exactly where it ends


def test_a_chunk_size_split_is_not_read_as_a_smaller_chunk(mux: Multiplexer) -> None:
    body = b"x" * 0x1A
    answer = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1", b"a\r\n" + body + b"\r\n0\r\n\r\n"]
    with Peer([answer]) as peer:
        (result,) = exchange(mux, wire(peer.url + "/t"))
    assert isinstance(result, Completed) and result.body == body


def test_a_chunked_answer_without_its_final_crlf_is_not_complete(mux: Multiplexer) -> None:
    unfinished = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    with Peer([[unfinished]], then="hold") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t", timeout=0.5))
    assert isinstance(result, httpx.ReadTimeout)


def test_a_chunked_answer_with_trailers_reads_whole(mux: Multiplexer) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n"
    with Peer([[answer], [LENGTH]]) as peer:
        results = exchange(mux, wire(peer.url + "/t")) + exchange(mux, wire(peer.url + "/t"))
    assert [r.body for r in results if isinstance(r, Completed)] == [b"{}", b"{}"]
    assert mux.opened == 1


def test_bytes_after_an_answer_close_its_connection(mux: Multiplexer) -> None:
    with Peer([[CHUNKED + b"junk"], [LENGTH]]) as peer:
        first = exchange(mux, wire(peer.url + "/t"))
        second = exchange(mux, wire(peer.url + "/t"))
    assert isinstance(first[0], Completed) and first[0].body == b"{}"
    assert isinstance(second[0], Completed) and mux.opened == 2 and peer.accepted == 2


@pytest.mark.parametrize("line", [b"SSH-2.0-OpenSSH_9.6\r\n", b"\r\n", b"garbage", b"HTTPS/1.1 200 OK\r\n"])
def test_not_an_http_answer_is_refused_at_once(mux: Multiplexer, line: bytes) -> None:
    """The peer holds the connection open after its line: refused as
    http.client refuses it, not left to the (here 30 s) deadline."""
    with Peer([[line]], then="hold") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t", timeout=30.0))
    assert isinstance(result, httpx.RemoteProtocolError) and "BadStatusLine" in str(result)


def test_a_status_line_on_its_way_is_waited_for(mux: Multiplexer) -> None:
    with Peer([[b"HT", b"TP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"]]) as peer:
        (result,) = exchange(mux, wire(peer.url + "/t"))
    assert isinstance(result, Completed) and result.body == b"{}"


def test_a_body_cut_short_is_a_protocol_error(mux: Multiplexer) -> None:
    with Peer([[b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n{}"]], then="close") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t"))
    assert isinstance(result, httpx.RemoteProtocolError) and "IncompleteRead" in str(result)


def test_a_body_still_on_its_way_ends_at_the_deadline(mux: Multiplexer) -> None:
    with Peer([[b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n{}"]], then="hold") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t", timeout=0.5))
    assert isinstance(result, httpx.ReadTimeout)


def test_a_connection_closed_mid_chunk_is_a_protocol_error(mux: Multiplexer) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}"
    with Peer([[answer]], then="close") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t"))
    assert isinstance(result, httpx.RemoteProtocolError) and "IncompleteRead" in str(result)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
def test_an_answer_over_max_body_is_too_large(mux: Multiplexer, answer: bytes) -> None:
    with Peer([[answer]]) as peer:
        (result,) = exchange(mux, wire(peer.url + "/t", max_body=10))
    assert isinstance(result, BodyTooLarge) and result.status == 200 and result.limit == 10


def test_a_chunked_answer_over_max_body_is_too_large_before_it_ends(mux: Multiplexer) -> None:
    """15 bytes of chunks against a limit of 10, then the peer stalls:
    refused for its size, not left to the deadline."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n" + b"x" * 15 + b"\r\n"
    with Peer([[answer]], then="hold") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t", timeout=30.0, max_body=10))
    assert isinstance(result, BodyTooLarge) and result.limit == 10


def test_a_chunk_size_that_is_not_hex_is_refused_at_once(mux: Multiplexer) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"
    with Peer([[answer]], then="hold") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t", timeout=30.0))
    assert isinstance(result, httpx.RemoteProtocolError) and "IncompleteRead" in str(result)


def test_an_answer_without_length_ends_with_its_connection(mux: Multiplexer) -> None:
    with Peer([[b"HTTP/1.1 200 OK\r\n\r\n{", b"}"]], then="close") as peer:
        (result,) = exchange(mux, wire(peer.url + "/t"))
        (again,) = exchange(mux, wire(peer.url + "/t", timeout=0.5))  # the peer has no second script
    assert isinstance(result, Completed) and result.body == b"{}"
    assert isinstance(again, httpx.ReadTimeout) and mux.opened == 2  # the closed connection was not kept


def test_connection_refused_is_a_connect_error(mux: Multiplexer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    (result,) = exchange(mux, wire(f"http://127.0.0.1:{port}/t"))
    assert isinstance(result, httpx.ConnectError)


def test_an_unknown_scheme_is_refused(mux: Multiplexer) -> None:
    (result,) = exchange(mux, wire("ftp://127.0.0.1:21/t"))
    assert isinstance(result, httpx.UnsupportedProtocol)


def test_a_connection_the_peer_closed_while_idle_is_replaced(mux: Multiplexer) -> None:
    with Peer([[LENGTH]]) as first:
        exchange(mux, wire(first.url + "/t"))
    # the peer is gone (its connection closed while idle in the multiplexer);
    # a new peer on another port would be another origin, so reuse the port
    port = httpx.URL(first.url).port
    with socket.create_server(("127.0.0.1", port)) as server:
        url = f"http://127.0.0.1:{port}/t"

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(LENGTH)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        (result,) = exchange(mux, wire(url))
        thread.join(5)
    assert isinstance(result, Completed) and result.body == b"{}" and mux.opened == 2


def test_many_exchanges_in_flight_on_one_thread(mux: Multiplexer) -> None:
    with Peer([[LENGTH]] * 24) as peer:
        results = exchange(mux, *[wire(peer.url + f"/t{i}") for i in range(12)])
        again = exchange(mux, *[wire(peer.url + f"/t{i}") for i in range(12)])
    assert all(isinstance(r, Completed) and r.body == b"{}" for r in results + again)
    assert mux.opened == 12 + (12 - 8) and peer.accepted == mux.opened  # keeps 8 idle, as configured


def test_cancel_drops_exchanges_in_flight(mux: Multiplexer) -> None:
    called: list[object] = []
    with Peer([]) as peer:  # the peer reads the request and never answers
        mux.start(wire(peer.url + "/t"), called.append)
        mux.poll(0.1)
        assert mux.in_flight == 1
        mux.cancel()
        mux.poll(0.0)
    assert called == [] and not mux.active


def test_wake_returns_a_waiting_poll() -> None:
    mux = Multiplexer(ssl_context=ssl_context(None))
    threading.Timer(0.1, mux.wake).start()
    mux.poll(None)  # nothing in flight, no timeout: only the wake-up returns it (else pytest-timeout fails)
    assert not mux.active
    mux.close()


def test_tls_is_verified_against_the_given_authority(tmp_path: Path) -> None:
    server, cert = tls_issuer(tmp_path)
    url = f"https://127.0.0.1:{server.port}{DISCOVERY_PATH}"
    trusting = Multiplexer(ssl_context=ssl_context(cert))
    default = Multiplexer(ssl_context=ssl_context(None))  # certifi: no test CA in it
    with server:
        first, second = exchange(trusting, wire(url, method="GET"), wire(url, method="GET"))
        third = exchange(trusting, wire(url, method="GET"))[0]
        (refused,) = exchange(default, wire(url, method="GET"))
    for result in (first, second, third):
        assert isinstance(result, Completed) and json.loads(result.body)["token_endpoint"]
    assert trusting.opened == 2  # two at once, then one of them again
    assert isinstance(refused, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(refused)
    trusting.close()
    default.close()
