"""A ZITADEL-compatible authorization server for keyd's integration tests,
benchmarks and ``make demo``.

It listens on a free loopback port (``http.server`` with one thread per
connection and HTTP/1.1 keep-alive) and serves discovery, the token
endpoint (RFC 7523 JWT-bearer, verified by Authlib, see issuer_oauth.py),
introspection (private_key_jwt) and an empty JWKS. Tests drive it through
the Python API (``IssuerServer``, the ``issuer`` fixture in conftest.py):
register keys, move its clock, pick ZITADEL's old 500 rejection style,
inject faults, and read counters and every token it issued (leak canaries,
all prefixed ``zat_``).

Standalone (for ``make demo``)::

    python -m tests.support.issuer --port 8089 [--state-file state.json]

prints its URL on the first stdout line and serves until SIGTERM, with an
admin API: ``POST /_admin/keys`` (JSON: principal, key_id, public_key_pem,
expires_at, kind), ``POST /_admin/users`` (JSON: user_id, org, roles:
[[role, org or null]], for the key API), ``DELETE /_admin/keys/{key_id}``,
``GET /_admin/stats``. The user service v2 key API (AddKey, ListKeys,
RemoveKey with ZITADEL's authorization) is served by ``zitadel_api.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import socket
import socketserver
import ssl
import threading
import traceback
from collections import Counter, deque
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from tests.support.issuer_oauth import FormRequest, IssuerOAuth, Registry
from tests.support.zitadel_api import DEFAULT_ORG, KeyAPI

log = logging.getLogger(__name__)

TOKEN_PATH, INTROSPECT_PATH = "/oauth/v2/token", "/oauth/v2/introspect"
DISCOVERY_PATH, JWKS_PATH = "/.well-known/openid-configuration", "/oauth/v2/keys"
FAULT_MODES = {
    "503",
    "502",
    "504",
    "500",
    "hang",
    "garbage",
    "no_token",
    "oversized",
    "close",
    "bad_page",
    "pass",
    "drip",
    "gzip_junk",
    "huge_expiry",
    "crlf_token",
}
REJECTIONS = {"invalid_grant", "invalid_client", "unauthorized_client"}
OLD_STYLE = {"error": "server_error", "error_description": "Errors.Internal"}  # docs/zitadel.md §4
NEW_STYLE = {"error": "invalid_grant", "error_description": "invalid assertion"}
MAX_BODY = 1 << 20
Reply = tuple[int, str, bytes] | None  # (status, content type, body); None drops the connection


def _json(status: int, body: Any) -> Reply:
    return status, "application/json", json.dumps(body).encode()


def _peek(assertion: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Unverified header and claims of an assertion (for counters and tests)."""
    try:
        head, body, _ = (assertion or "").split(".")
        parts = [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in (head, body)]
        return (parts[0], parts[1]) if all(isinstance(p, dict) for p in parts) else None
    except ValueError:
        return None


class IssuerServer(Registry):
    """The server plus its registry (``add_key``, ``remove_key``, ``now``, ...
    from ``Registry``). Use as a context manager or ``start()``/``stop()``.

    Knobs: ``reject_style`` ("400" or "500"), ``fail_mode`` (every request),
    ``fail_next(n, mode)``, ``hang_seconds``, ``drip_seconds`` (mode "drip":
    the real answer, status line and headers included, one byte per
    ``drip_seconds``; ``dripping``, ``drips_completed``, ``drips_abandoned``
    count them), ``fault_paths``. Odd token answers: "gzip_junk"
    (``Content-Encoding: gzip`` over junk), "huge_expiry" (a real token with
    ``expires_in`` = 10^30), "crlf_token" (an access token with CR/LF). Records:
    ``requests_seen``, ``requests_by_path``, ``attempts_by_key``,
    ``tokens_by_key``, ``issued_tokens``, ``tokens_issued``, ``assertions``
    (unverified header/claims of each token request), ``rejections``
    (Authlib's reasons), ``errors`` (unexpected exceptions: should stay empty).
    """

    def __init__(self, *, port: int = 0, admin: bool = False, state_file: Path | str | None = None) -> None:
        super().__init__()
        self._bind(port)
        self.url = self.issuer = f"http://127.0.0.1:{self._httpd.server_port}"
        self.port = self._httpd.server_port
        self.oauth = IssuerOAuth(self, self.issuer)
        self.key_api = KeyAPI(self)  # the user service v2 key API (zitadel_api.py)
        self.admin, self.state_file = admin, Path(state_file) if state_file else None
        self.reject_style, self.fail_mode = "400", None
        self.hang_seconds = 30.0
        self.drip_seconds = 1.0
        self.discovery_overrides: dict[str, Any] = {}
        self.dripping = 0  # answers being dripped right now
        self.drips_completed = 0  # dripped answers the client waited for to the end
        self.drips_abandoned = 0  # ... the client hung up on
        self.fault_paths = {TOKEN_PATH}
        self.requests_seen = 0
        self.requests_by_path: Counter[str] = Counter()
        self.attempts_by_key: Counter[str] = Counter()
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.errors: list[str] = []
        self._faults: deque[str] = deque()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        if self.state_file and self.state_file.exists():
            try:
                self._load_state()
            except Exception:
                self._httpd.server_close()
                raise

    # -- lifecycle -----------------------------------------------------------
    def _bind(self, port: int) -> None:
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._closed = False

    def start(self) -> IssuerServer:
        """Serve in a background thread; after ``stop()`` this restarts on the
        same port with the same registry (an "issuer outage" in tests)."""
        if self._closed:
            self._bind(self.port)
            self._stopping.clear()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=f"issuer-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging requests, cut open connections, close."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._httpd.server_close()  # joins the connection threads
        self._closed = True

    def __enter__(self) -> IssuerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    # -- faults --------------------------------------------------------------
    def fail_next(self, n: int, mode: str) -> None:
        """The next ``n`` requests to ``fault_paths`` fail with ``mode``
        ("pass" answers normally: ``fail_next(2, "pass"); fail_next(1,
        "garbage")`` spoils the third request). A path in ``fault_paths``
        ending in ``*`` is a prefix (``"/v2/users/*"``)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {sorted(FAULT_MODES)}")
        with self._lock:
            self._faults.extend([mode] * n)

    def _take_fault(self, path: str) -> str | None:
        if not any(path == p or (p.endswith("*") and path.startswith(p[:-1])) for p in self.fault_paths):
            return None
        with self._lock:
            return self._faults.popleft() if self._faults else self.fail_mode

    def _fault(self, mode: str) -> Reply | str:
        """A faulty reply, or "pass" to answer normally (after a hang)."""
        if mode == "pass":
            return "pass"
        if mode == "500":
            return _json(500, {"code": 13, "message": "Errors.Internal", "details": []})
        if mode == "bad_page":  # well-formed JSON, wrong shape (a key without an id)
            return _json(
                200,
                {
                    "pagination": {"totalResult": "1000000"},
                    "result": [{"userId": "1", "creationDate": "yesterday"}],
                },
            )
        if mode in ("502", "503", "504"):
            return int(mode), "text/html", b"<html><body>Bad Gateway</body></html>"
        if mode == "hang":
            return None if self._stopping.wait(self.hang_seconds) else "pass"
        if mode == "garbage":
            return 200, "text/html", b"<html><h1>Welcome to nginx!</h1>\x00\xff</html>"
        if mode == "no_token":
            return _json(200, {"token_type": "Bearer", "expires_in": self.token_lifetime})
        if mode == "oversized":
            return _json(200, {"token_type": "Bearer", "padding": "x" * (8 << 20)})
        if mode == "close":
            return None
        if mode == "gzip_junk":
            return 200, "gzip:application/json", b"\x1f\x8bnot gzip at all"
        raise ValueError(f"unknown fault mode {mode!r}")

    def _odd(self, mode: str, reply: Reply) -> Reply:
        """The real answer, dripped ("drip") or with its token made odd."""
        if reply is None or mode == "drip":
            return None if reply is None else (reply[0], "drip:" + reply[1], reply[2])
        doc = json.loads(reply[2])
        if "access_token" in doc:
            if mode == "huge_expiry":
                doc["expires_in"] = 10**30
            else:
                doc["access_token"] = "zat_evil\r\nX-Injected: 1"
        return _json(reply[0], doc)

    # -- requests ------------------------------------------------------------
    def respond(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        path = target.split("?", 1)[0]
        with self._lock:
            self.requests_seen += 1
            self.requests_by_path[path] += 1
        try:
            fault = self._take_fault(path)
            if fault in ("drip", "huge_expiry", "crlf_token"):
                return self._odd(fault, self._route(method, path, headers, body))
            reply = self._fault(fault) if fault is not None else "pass"
            if reply != "pass":
                return reply  # type: ignore[return-value]
            return self._route(method, path, headers, body)
        except Exception:
            self.errors.append(traceback.format_exc())
            log.exception("test issuer: unexpected error on %s %s", method, path)
            return _json(500, {"error": "server_error", "error_description": "test issuer bug"})

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if method == "GET" and path == DISCOVERY_PATH:
            return _json(200, self.discovery())
        if method == "GET" and path == JWKS_PATH:
            return _json(200, {"keys": []})  # opaque tokens: nothing to publish
        if method == "POST" and path == TOKEN_PATH:
            return self._token(self._form(path, headers, body))
        if method == "POST" and path == INTROSPECT_PATH:
            status, payload = self.oauth.create_endpoint_response(
                "introspection", self._form(path, headers, body)
            )
            if payload.get("error") == "invalid_client":
                status = 401
            return _json(status, payload)
        if self.key_api.handles(path):
            return self.key_api.respond(method, path, headers, body)
        if self.admin and path.startswith("/_admin/"):
            return self._admin(method, path, body)
        return _json(404, {"error": "not_found", "error_description": f"{method} {path}"})

    def _form(self, path: str, headers: dict[str, str], body: bytes) -> FormRequest:
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return FormRequest("POST", self.url + path, headers, form)

    def _token(self, request: FormRequest) -> Reply:
        peeked = _peek(request.form.get("assertion"))
        if peeked is not None:
            with self._lock:
                self.assertions.append(peeked)
                self.attempts_by_key[str(peeked[0].get("kid"))] += 1
        status, payload = self.oauth.create_token_response(request)
        if status != 200 and payload.get("error") in REJECTIONS:
            status, payload = (500, OLD_STYLE) if self.reject_style == "500" else (400, NEW_STYLE)
        return _json(status, payload)

    def discovery(self) -> dict[str, Any]:
        """The discovery document, with ``discovery_overrides`` applied (a
        lying or split deployment: another ``issuer``, endpoints elsewhere)."""
        return {**self._discovery(), **self.discovery_overrides}

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.url + TOKEN_PATH,
            "introspection_endpoint": self.url + INTROSPECT_PATH,
            "jwks_uri": self.url + JWKS_PATH,
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
            "scopes_supported": ["openid", "profile", "email"],
            "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
            "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
            "request_object_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
        }

    # -- admin API and state file (standalone mode) --------------------------
    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        if method == "POST" and path == "/_admin/keys":
            try:
                spec = json.loads(body)
                expires = spec.get("expires_at")
                self.add_key(
                    spec["principal"],
                    spec["key_id"],
                    spec["public_key_pem"],
                    datetime.fromisoformat(expires) if expires else None,
                    spec.get("kind", "serviceaccount"),
                )
            except (ValueError, KeyError, TypeError) as exc:
                return _json(400, {"error": "invalid_request", "error_description": str(exc)})
            return _json(201, {"key_id": spec["key_id"]})
        if method == "POST" and path == "/_admin/users":
            try:
                spec = json.loads(body)
                self.key_api.add_user(spec["user_id"], spec.get("org") or DEFAULT_ORG)
                for role, org in spec.get("roles", []):
                    self.key_api.grant(spec["user_id"], role, org)
            except (ValueError, KeyError, TypeError) as exc:
                return _json(400, {"error": "invalid_request", "error_description": str(exc)})
            self._save_state()
            return _json(201, {"user_id": spec["user_id"]})
        if method == "DELETE" and path.startswith("/_admin/keys/"):
            self.remove_key(path.removeprefix("/_admin/keys/"))
            return 204, "application/json", b""
        if method == "GET" and path == "/_admin/stats":
            with self._lock:
                return _json(
                    200,
                    {
                        "requests_seen": self.requests_seen,
                        "tokens_issued": self.tokens_issued,
                        "tokens_by_key": dict(self.tokens_by_key),
                    },
                )
        return _json(404, {"error": "not_found"})

    def add_key(self, *args: Any, **kwargs: Any) -> None:
        super().add_key(*args, **kwargs)
        self._save_state()

    def remove_key(self, key_id: str) -> None:
        super().remove_key(key_id)
        self._save_state()

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        keys = [
            {
                "principal": k.principal,
                "key_id": k.key_id,
                "public_key_pem": k.public_pem,
                "kind": k.kind,
                "expires_at": k.expires_at and k.expires_at.isoformat(),
                "created_at": k.created_at.isoformat(),
            }
            for k in self.keys()
        ]
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"keys": keys, "token_lifetime": self.token_lifetime, "key_api": self.key_api.state()})
        )
        os.replace(tmp, self.state_file)

    def _load_state(self) -> None:
        assert self.state_file is not None
        state = json.loads(self.state_file.read_text())
        self.token_lifetime = int(state.get("token_lifetime", self.token_lifetime))
        for k in state.get("keys", []):
            expires, created = k.get("expires_at"), k.get("created_at")
            Registry.add_key(
                self,
                k["principal"],
                k["key_id"],
                k["public_key_pem"],
                datetime.fromisoformat(expires) if expires else None,
                k["kind"],
                datetime.fromisoformat(created) if created else None,
            )
        self.key_api.load_state(state.get("key_api", {}))


def tls_issuer(directory: Path) -> tuple[IssuerServer, Path]:
    """The test issuer behind TLS, with a self-signed certificate for
    127.0.0.1 and localhost written into ``directory``: the server (not yet
    started; ``https://127.0.0.1:<port>``) and the certificate to trust."""
    from tests.support.smtp import self_signed  # here: it imports pytest and aiosmtpd, the server runs alone

    cert, key = self_signed(directory)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = IssuerServer()
    server._httpd.socket = server_side.wrap_socket(server._httpd.socket, server_side=True)
    return server, cert


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    owner: IssuerServer

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn() (DNS)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.track(request, True)  # in the accept thread: stop() sees every socket
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.owner.track(request, False)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("test issuer: connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 60  # idle keep-alive connections end by themselves
    wbufsize = 1 << 16  # one write per response ...
    disable_nagle_algorithm = True  # ... sent at once (no 40 ms delayed-ACK stalls)
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("test issuer: " + format, *args)  # request line only, never a body

    def do_GET(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return self._send((413, "text/plain", b"bad or oversized request body"))
        body = self.rfile.read(length)
        reply = self.server.owner.respond(self.command, self.path, dict(self.headers), body)
        if reply is None:
            self.close_connection = True  # fault "close" or shutdown: no answer at all
            return None
        return self._send(reply)

    do_POST = do_DELETE = do_GET

    def _send(self, reply: tuple[int, str, bytes]) -> None:
        status, content_type, body = reply
        if content_type.startswith("drip:"):
            return self._drip(status, content_type.removeprefix("drip:"), body)
        self.send_response(status)
        if content_type.startswith("gzip:"):  # fault "gzip_junk": labelled, not encoded
            content_type = content_type.removeprefix("gzip:")
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, status: int, content_type: str, body: bytes) -> None:
        """The whole answer one byte at a time (a slow middlebox)."""
        owner = self.server.owner
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.close_connection = True
        with owner._lock:
            owner.dripping += 1
        try:
            for i in range(len(head) + len(body)):
                if owner._stopping.wait(owner.drip_seconds):
                    raise ConnectionAbortedError("test issuer stopping")
                self.wfile.write((head + body)[i : i + 1])
                self.wfile.flush()
        except OSError:
            with owner._lock:
                owner.drips_abandoned += 1  # the client gave up: what a deadline is for
        else:
            with owner._lock:
                owner.drips_completed += 1
        finally:
            with owner._lock:
                owner.dripping -= 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="keyd's test ZITADEL issuer")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--state-file", type=Path, help="keys survive restarts here")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with IssuerServer(port=args.port, admin=True, state_file=args.state_file) as server:
        print(server.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
