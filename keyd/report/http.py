"""A small observability HTTP server (stdlib ``ThreadingHTTPServer``).

``GET /metrics`` (Prometheus), ``/healthz`` (200 while the scheduler is
ticking, else 503: for liveness checks) and ``/readyz`` (200 with
``{"role": "leader"|"standby"}`` once the database answers and the role is
known, else 503). Listens on ``[http] listen``, loopback by default: it
exposes key ids and principals, so put a proxy with auth in front before
binding anything wider. Read-only; nothing here changes state.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from keyd.errors import ConfigError
from keyd.report.metrics import KeydMetrics

log = logging.getLogger(__name__)

#: ``healthy()`` → (ok, reason); ``ready()`` → (ok, body).
Health = Callable[[], tuple[bool, str]]
Ready = Callable[[], tuple[bool, dict[str, Any]]]


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("http.listen", f"{listen!r} is not HOST:PORT (e.g. \"127.0.0.1:9464\")")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: KeydMetrics
    healthy: Health
    ready: Ready


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a stalled client must not hold a thread forever
    server_version = "keyd"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, content_type = self.server.metrics.render()
                self._send(200, body, content_type)
            elif path == "/healthz":
                ok, reason = self.server.healthy()
                self._send(200 if ok else 503, (reason + "\n").encode(), "text/plain")
            elif path == "/readyz":
                ok, data = self.server.ready()
                self._send(200 if ok else 503, json.dumps(data).encode() + b"\n",
                           "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")
        except Exception:  # never let a handler bug kill the server thread quietly
            log.exception("http: error serving %s", path)
            self._send(500, b"internal error\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http: %s " + format, self.address_string(), *args)


class ObservabilityServer:
    """Serves in a background thread from ``start()`` until ``close()``."""

    def __init__(self, listen: str, metrics: KeydMetrics, healthy: Health, ready: Ready) -> None:
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
        self._thread = threading.Thread(target=self._server.serve_forever, name="keyd-http",
                                        kwargs={"poll_interval": 0.5}, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        log.info("http: serving /metrics, /healthz, /readyz on %s:%d", *self.address)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
