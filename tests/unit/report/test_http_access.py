"""The HTTP server's access rule, page routes and compression, over real
HTTP on loopback with a recording ``Views``."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from keyd.redact import Secret
from keyd.report.http import Access, ObservabilityServer
from keyd.report.metrics import KeydMetrics

TOKEN = "s3cret-token-for-tests"


class FakeViews:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def index(self, query: object = None) -> str:
        return "<!DOCTYPE html><p>" + "x" * 4000 + "</p>"

    def key(self, key_id: str) -> str | None:
        self.asked.append(key_id)
        return f"<p>{key_id}</p>" if key_id != "nope" else None

    def status(self) -> Any:
        return [{"key_id": "k1"}]


def serve(engine: Engine, access: Access | None) -> tuple[ObservabilityServer, FakeViews]:
    views = FakeViews()
    server = ObservabilityServer(
        "127.0.0.1:0",
        KeydMetrics(engine, version="t"),
        lambda: (True, "ok"),
        lambda: (True, {"role": "leader"}),
        views=views,
        access=access,
    )
    server.start()
    return server, views


@pytest.fixture
def locked(engine: Engine) -> Iterator[httpx.Client]:
    server, _ = serve(engine, Access(Secret(TOKEN)))
    host, port = server.address
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
        yield client
    server.close()


@pytest.mark.parametrize("path", ["/", "/api/v1/status", "/keys/k1", "/metrics", "/nothing"])
def test_token_required_everywhere(locked: httpx.Client, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic !!notbase64"},
    ):
        response = locked.get(path, headers=headers)
        assert response.status_code == 401, headers
        assert TOKEN not in response.text
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_bearer_and_basic_open_it(locked: httpx.Client) -> None:
    assert locked.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert locked.get("/api/v1/status", headers={"Authorization": f"Basic {basic}"}).json() == [
        {"key_id": "k1"}
    ]


def test_health_stays_open_for_probes(locked: httpx.Client) -> None:
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/readyz").status_code == 200


def test_metrics_public_opens_only_metrics(engine: Engine) -> None:
    server, _ = serve(engine, Access(Secret(TOKEN), metrics_public=True))
    host, port = server.address
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
            assert client.get("/metrics").status_code == 200
            assert client.get("/").status_code == 401
    finally:
        server.close()


@pytest.fixture
def open_server(engine: Engine) -> Iterator[tuple[httpx.Client, FakeViews]]:
    server, views = serve(engine, None)
    host, port = server.address
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
        yield client, views
    server.close()


def test_key_ids_are_percent_decoded(open_server: tuple[httpx.Client, FakeViews]) -> None:
    client, views = open_server
    assert client.get("/keys/a%2Fb%20%3Cc%3E").status_code == 200
    assert client.get("/keys/nope").status_code == 404
    assert client.get("/keys/").status_code == 404
    assert views.asked == ["a/b <c>", "nope"]


def test_gzip_when_accepted(open_server: tuple[httpx.Client, FakeViews]) -> None:
    client, _ = open_server
    raw = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "Accept-Encoding"
    plain = client.get("/", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    refused = client.get("/", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    assert raw.text == plain.text  # httpx decodes; the bytes on the wire were compressed
    with client.stream("GET", "/", headers={"Accept-Encoding": "gzip"}) as stream:
        wire = b"".join(stream.iter_raw())
    assert len(wire) < len(plain.content) and gzip.decompress(wire) == plain.content


def test_pages_carry_security_headers(open_server: tuple[httpx.Client, FakeViews]) -> None:
    client, _ = open_server
    page = client.get("/")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["cache-control"] == "no-store"
