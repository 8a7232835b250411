"""keyd's HTTP server (stdlib ``ThreadingHTTPServer``): the status page,
its JSON twin, Prometheus metrics and health.

* ``GET /`` — the status page (``keyd.report.pages``; ``?after=KEY_ID``,
  ``?principal=P``, ``?key=PREFIX`` pick the page of the key listing,
  anything else in the query string is ignored); ``GET /keys/{key_id}``
  — one key (the id percent-encoded); ``GET /api/v1/status`` — exactly the
  document ``keyd status --json`` prints (one builder,
  ``keyd.report.status.load_status``).
* ``GET /metrics`` — Prometheus; ``/healthz`` (JSON; 200 while the
  scheduler is ticking and work advances, else 503: for liveness checks;
  the body shows the work in progress, docs/daemon.md) and ``/readyz`` (200 with
  ``{"role": "leader"|"standby"}`` once the database answers and the role
  is known, else 503).

Access: with ``http.auth_token_file`` every path except ``/healthz`` and
``/readyz`` (which show no inventory, and which liveness probes must reach)
needs ``Authorization: Bearer <token>`` — or HTTP Basic with the token as
the password, so a browser can log in — compared in constant time;
``http.metrics_public = true`` leaves ``/metrics`` open for a scraper
without credentials. Config load refuses a non-loopback ``http.listen``
without a token. Read-only: nothing here changes state; responses are
gzip-compressed when the client accepts it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, unquote

from keyd.errors import ConfigError
from keyd.redact import Secret
from keyd.report.metrics import KeydMetrics
from keyd.report.web import CONTENT_SECURITY_POLICY

log = logging.getLogger(__name__)

#: ``healthy()`` → (ok, reason or JSON body); ``ready()`` → (ok, body).
Health = Callable[[], tuple[bool, str | dict[str, Any]]]
Ready = Callable[[], tuple[bool, dict[str, Any]]]

OPEN_PATHS: Final = ("/healthz", "/readyz")
GZIP_MIN: Final = 1024  # smaller bodies are not worth compressing
HTML: Final = "text/html; charset=utf-8"
JSON: Final = "application/json"
PAGE_PARAMS: Final = ("after", "principal", "key")  # GET /?after=KEY_ID&principal=…&key=PREFIX
QUERY_VALUE_MAX: Final = 1024


class Views(Protocol):
    """What the page routes need (``keyd.runtime.views.StatusViews``)."""

    def index(self, query: Mapping[str, str] | None = None) -> str: ...

    def key(self, key_id: str) -> str | None: ...

    def status(self) -> Any: ...


@dataclass(frozen=True)
class Access:
    """``token``: required when set; ``metrics_public``: ``/metrics`` without it."""

    token: Secret | None = None
    metrics_public: bool = False

    def allows(self, path: str, authorization: str | None) -> bool:
        if self.token is None or path in OPEN_PATHS:
            return True
        if path == "/metrics" and self.metrics_public:
            return True
        given = _credential(authorization or "")
        return hmac.compare_digest(given.encode(), self.token.reveal().encode())


def _credential(header: str) -> str:
    """The token from ``Bearer <token>`` or from Basic's password part."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("http.listen", f'{listen!r} is not HOST:PORT (e.g. "127.0.0.1:9464")')
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: KeydMetrics
    healthy: Health
    ready: Ready
    views: Views | None
    access: Access


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _query = ""
    timeout = 10  # a stalled client must not hold a thread forever
    server_version = "keyd"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path, _, self._query = self.path.partition("?")
        try:
            if not self.server.access.allows(path, self.headers.get("Authorization")):
                self._send(
                    401,
                    b"authorization required\n",
                    "text/plain",
                    extra={"WWW-Authenticate": 'Bearer realm="keyd", Basic realm="keyd"'},
                )
                return
            self._route(path)
        except Exception:  # never let a handler bug kill the server thread quietly
            log.exception("http: error serving %s", path)
            self._send(500, b"internal error\n", "text/plain")

    def _route(self, path: str) -> None:
        views = self.server.views
        if path == "/metrics":
            body, content_type = self.server.metrics.render(self.headers.get("Accept"))
            self._send(200, body, content_type)
        elif path == "/healthz":
            ok, health = self.server.healthy()
            doc = (
                health
                if isinstance(health, dict)
                else {"status": "ok" if ok else "unhealthy", "reason": health}
            )
            self._send(200 if ok else 503, json.dumps(doc).encode() + b"\n", JSON)
        elif path == "/readyz":
            ok, data = self.server.ready()
            self._send(200 if ok else 503, json.dumps(data).encode() + b"\n", JSON)
        elif views is not None and path == "/":
            query = page_query(self._query)
            if query is None:
                self._send(400, b"bad query\n", "text/plain")
            else:
                self._send(200, views.index(query).encode(), HTML)
        elif views is not None and path == "/api/v1/status":
            self._send(200, json.dumps(views.status(), indent=2).encode() + b"\n", JSON)
        elif views is not None and path.startswith("/keys/") and len(path) > len("/keys/"):
            page = _key_page(views, path[len("/keys/") :])
            if page is None:
                self._send(404, b"no such key\n", "text/plain")
            else:
                self._send(200, page.encode(), HTML)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        headers = {
            "Content-Type": content_type,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            **(extra or {}),
        }
        if content_type == HTML:
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        if len(body) >= GZIP_MIN:
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(self.headers.get("Accept-Encoding", "")):
                body = gzip.compress(body, compresslevel=6)
                headers["Content-Encoding"] = "gzip"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http: %s " + format, self.address_string(), *args)


def page_query(raw: str) -> dict[str, str] | None:
    """The status page's query string (``after``, ``principal``, ``key``:
    README "Status page"), or None when it is not one: undecodable, a
    name twice, a value longer than ``QUERY_VALUE_MAX``. Other names are
    ignored."""
    try:
        pairs = parse_qsl(raw, keep_blank_values=False, errors="strict", max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name not in PAGE_PARAMS:
            continue
        if name in query or len(value) > QUERY_VALUE_MAX or "\x00" in value:
            return None
        query[name] = value
    return query


def _key_page(views: Views, quoted: str) -> str | None:
    try:
        key_id = unquote(quoted, errors="strict")
    except UnicodeDecodeError:
        return None
    return views.key(key_id)


def _accepts_gzip(header: str) -> bool:
    """``gzip`` listed in Accept-Encoding with a q-value above 0."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class ObservabilityServer:
    """Serves in a background thread from ``start()`` until ``close()``.
    Without ``views`` only ``/metrics`` and health are served."""

    def __init__(
        self,
        listen: str,
        metrics: KeydMetrics,
        healthy: Health,
        ready: Ready,
        *,
        views: Views | None = None,
        access: Access | None = None,
    ) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (_Server,), {"address_family": family})
        try:
            self._server: _Server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError("http.listen", f"cannot listen on {listen}: {exc.strerror}") from None
        self._server.metrics = metrics
        self._server.healthy = healthy
        self._server.ready = ready
        self._server.views = views
        self._server.access = access or Access()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="keyd-http", kwargs={"poll_interval": 0.5}, daemon=True
        )

    @property
    def access(self) -> Access:
        return self._server.access

    @access.setter
    def access(self, access: Access) -> None:
        """Swap the access rule (SIGHUP); the next request sees it."""
        self._server.access = access

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        pages = "/, /keys/…, /api/v1/status, " if self._server.views is not None else ""
        log.info("http: serving %s/metrics, /healthz, /readyz on %s:%d", pages, *self.address)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
