"""keyd.clients.pooled against real loopback peers (the test issuer, a
TLS-wrapped test issuer, a dripping peer): kept-alive connections, TLS
verification, the total deadline, and errors as httpx's types. Asserts
what happened on the wire, never a duration."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keyd.clients import deadline as deadline_module
from keyd.clients.deadline import within
from keyd.clients.issuer import IssuerClient, ssl_context
from keyd.clients.pooled import PooledTransport, Reply, parse_headers
from keyd.clock import SystemClock
from keyd.errors import IssuerBadResponse, IssuerUnavailable
from tests.support.drip import HTTP_ANSWER, Dripper
from tests.support.issuer import DISCOVERY_PATH, IssuerServer, tls_issuer

TIMEOUTS = {"connect": 5.0, "read": 5.0}


@pytest.fixture
def issuer() -> Iterator[IssuerServer]:
    with IssuerServer() as server:
        yield server


def get(transport: PooledTransport, url: str) -> tuple[Reply, bytes]:
    parsed = httpx.URL(url)
    reply = transport.send("GET", parsed, [(b"Host", parsed.netloc)], None, TIMEOUTS)
    try:
        return reply, b"".join(reply.chunks())
    finally:
        reply.close()


def counting(issuer: IssuerServer, monkeypatch: pytest.MonkeyPatch) -> list[socket.socket]:
    opened: list[socket.socket] = []
    track = issuer.track

    def tracked(conn: socket.socket, alive: bool) -> None:
        if alive:
            opened.append(conn)
        track(conn, alive)

    monkeypatch.setattr(issuer, "track", tracked)
    return opened


def test_requests_share_one_kept_alive_connection(
    issuer: IssuerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = counting(issuer, monkeypatch)
    transport = PooledTransport(ssl_context=ssl_context(None))
    for _ in range(3):
        reply, body = get(transport, issuer.url + DISCOVERY_PATH)
        assert reply.status == 200 and json.loads(body)["issuer"] == issuer.url
    transport.close()
    assert len(opened) == 1 and issuer.requests_seen == 3


def test_a_half_read_answer_closes_its_connection(
    issuer: IssuerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = counting(issuer, monkeypatch)
    transport = PooledTransport(ssl_context=ssl_context(None))
    url = httpx.URL(issuer.url + DISCOVERY_PATH)
    transport.send("GET", url, [(b"Host", url.netloc)], None, TIMEOUTS).close()  # body never read
    reply, _ = get(transport, str(url))
    transport.close()
    assert reply.status == 200 and len(opened) == 2  # the unread answer's connection was not reused


def test_a_connection_the_issuer_closed_while_idle_is_replaced(issuer: IssuerServer) -> None:
    transport = PooledTransport(ssl_context=ssl_context(None))
    get(transport, issuer.url + DISCOVERY_PATH)
    issuer.stop()  # cuts every open connection
    issuer.start()
    reply, _ = get(transport, issuer.url + DISCOVERY_PATH)
    transport.close()
    assert reply.status == 200


def test_an_httpx_client_can_use_it(issuer: IssuerServer) -> None:
    with httpx.Client(transport=PooledTransport(ssl_context=ssl_context(None)), timeout=5.0) as client:
        first = client.get(issuer.url + DISCOVERY_PATH)
        second = client.post(issuer.url + "/oauth/v2/token", data={"grant_type": "nope"})
    assert first.status_code == 200 and first.json()["issuer"] == issuer.url
    assert second.status_code == 400 and second.json()["error"] == "unsupported_grant_type"


def test_tls_is_verified_against_the_given_authority(tmp_path: Path) -> None:
    server, cert = tls_issuer(tmp_path)
    url = f"https://127.0.0.1:{server.port}{DISCOVERY_PATH}"
    trusting = PooledTransport(ssl_context=ssl_context(cert))
    default = PooledTransport(ssl_context=ssl_context(None))  # certifi: no test CA in it
    with server:
        reply, body = get(trusting, url)
        assert reply.status == 200 and json.loads(body)["token_endpoint"]
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            get(default, url)
    trusting.close()
    default.close()


def test_connection_refused_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        get(PooledTransport(ssl_context=ssl_context(None)), f"http://127.0.0.1:{port}/")


def test_a_dripping_answer_ends_at_the_total_deadline() -> None:
    with Dripper(HTTP_ANSWER) as peer:
        transport = PooledTransport(ssl_context=ssl_context(None))
        with within(1.0, "drip") as deadline, pytest.raises(httpx.TimeoutException):
            get(transport, peer.url + "/")
        assert deadline.expired and not peer.finished.is_set()


def test_a_dripping_body_is_checked_against_the_deadline_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head arrives at once, then the body one byte at a time: each
    byte is a chunk, and the issuer client's reader gives up at the
    deadline by itself (the watchdog is switched off here)."""
    monkeypatch.setattr(deadline_module._WATCHDOG, "watch", lambda deadline: -1)  # never fires
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    done, stop = threading.Event(), threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(head)
            try:
                for _ in range(400):
                    if stop.wait(0.05):
                        return
                    conn.sendall(b" ")
            except OSError:
                return
            done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = IssuerClient(f"http://127.0.0.1:{server.getsockname()[1]}", clock=SystemClock(), timeout=1.0)
    with pytest.raises(IssuerUnavailable, match="no complete answer within 1s"):
        client.discover()
    client.close()
    assert not done.is_set()
    stop.set()
    thread.join(5)
    server.close()


def test_a_body_cut_short_is_a_protocol_error() -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n{}"
    with Dripper(truncated, pause=0.0) as peer:
        with pytest.raises(httpx.RemoteProtocolError, match="IncompleteRead"):
            get(PooledTransport(ssl_context=ssl_context(None)), peer.url + "/")


def test_not_an_http_answer_is_a_protocol_error() -> None:
    with Dripper(b"SSH-2.0-OpenSSH_9.6\r\n", pause=0.0) as peer:
        with pytest.raises(httpx.RemoteProtocolError):
            get(PooledTransport(ssl_context=ssl_context(None)), peer.url + "/")


def test_gzip_labelled_junk_is_a_decoding_error_as_with_httpx() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\njunk"
    with Dripper(answer, pause=0.0) as peer:
        client = IssuerClient(peer.url, clock=SystemClock(), timeout=5.0)
        with pytest.raises(IssuerBadResponse, match="cannot be decoded as its Content-Encoding says"):
            client.discover()
        client.close()


def test_answers_are_read_without_email_parser(issuer: IssuerServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shape of the cut: ``http.client`` hands a header block to
    ``email.parser`` (a third of a probe's HTTP exchange); the pooled
    connections split it themselves, and every field still reads as before
    (the test issuer, in its own threads, still parses requests with it)."""
    import email.parser

    parsed: list[str] = []
    real = email.parser.Parser.parsestr
    client_thread = threading.get_ident()

    def spy(self: email.parser.Parser, text: str, headersonly: bool = False) -> object:
        if threading.get_ident() == client_thread:
            parsed.append(text)
        return real(self, text, headersonly)

    monkeypatch.setattr(email.parser.Parser, "parsestr", spy)
    transport = PooledTransport(ssl_context=ssl_context(None))
    reply, body = get(transport, issuer.url + DISCOVERY_PATH)
    with httpx.Client(transport=transport, timeout=5.0) as client:
        answer = client.post(issuer.url + "/oauth/v2/token", data={"grant_type": "nope"})
    assert parsed == []
    assert reply.headers.get("CONTENT-TYPE", "").startswith("application/json")
    assert reply.headers.get("content-length") == str(len(body)) and "Content-Length" in reply.headers
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("application/json")


def test_header_fields_read_as_http_client_reads_them() -> None:
    lines = [
        b"Content-Type:  application/json \r\n",
        b"Set-Cookie: a=1\r\n",
        b"set-cookie: b=2\r\n",
        b"X-Folded: first\r\n",
        b"  second\r\n",
        b"no colon here\r\n",
        b"X-Latin: caf\xe9\r\n",
        b"\r\n",
    ]
    headers = parse_headers(lines)
    assert headers.get("content-type") == "application/json"
    assert headers.get("SET-COOKIE") == "a=1" and headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert headers.get("x-folded") == "first second" and headers.get("x-latin") == "caf\xe9"
    assert headers.get("missing") is None and headers.get_all("missing") is None and "missing" not in headers
    assert [n for n, _ in headers.items()] == [
        "Content-Type",
        "Set-Cookie",
        "set-cookie",
        "X-Folded",
        "X-Latin",
    ]


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", True),
        (
            b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"HTTP/1.1 200 OK\r\n\r\n{}", False),  # no length: the body ends with the connection
    ],
)
def test_framing_and_keep_alive_follow_the_standard_library(answer: bytes, reused: bool) -> None:
    with Dripper(answer, pause=0.0) as peer:
        transport = PooledTransport(ssl_context=ssl_context(None))
        url = httpx.URL(peer.url + "/")
        reply = transport.send("GET", url, [(b"Host", url.netloc)], None, TIMEOUTS)
        conn = reply._conn
        assert reply.status == 200 and b"".join(reply.chunks()) == b"{}"
        reply.close()
        assert reply._response.will_close is not reused
        assert (conn is not None and conn.sock is not None) is reused
        transport.close()
