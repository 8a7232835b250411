"""The observability endpoints over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from keyd.errors import ConfigError
from keyd.report.http import ObservabilityServer, parse_listen
from keyd.report.metrics import KeydMetrics


class State:
    healthy = True
    role: str | None = "leader"

    def health(self) -> tuple[bool, str]:
        return self.healthy, "ok" if self.healthy else "no tick for 95s"

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.role is not None, {"role": self.role}


@pytest.fixture
def served(engine: Engine) -> Iterator[tuple[State, httpx.Client]]:
    state = State()
    server = ObservabilityServer(
        "127.0.0.1:0", KeydMetrics(engine, version="0.1.0"), state.health, state.ready
    )
    server.start()
    host, port = server.address
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=5) as client:
        yield state, client
    server.close()


def test_metrics(served: tuple[State, httpx.Client]) -> None:
    _, client = served
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert 'keyd_build_info{version="0.1.0"} 1.0' in response.text


def test_health_follows_the_scheduler(served: tuple[State, httpx.Client]) -> None:
    state, client = served
    assert client.get("/healthz").status_code == 200
    state.healthy = False
    response = client.get("/healthz")
    assert response.status_code == 503 and "no tick" in response.text


def test_ready_reports_role(served: tuple[State, httpx.Client]) -> None:
    state, client = served
    assert client.get("/readyz").json() == {"role": "leader"}
    state.role = "standby"
    assert client.get("/readyz").json() == {"role": "standby"}
    state.role = None
    assert client.get("/readyz").status_code == 503


def test_unknown_path_and_head(served: tuple[State, httpx.Client]) -> None:
    _, client = served
    assert client.get("/../etc/passwd").status_code == 404
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize("listen", ["9464", "localhost", ":9464", "host:port", "h:99999"])
def test_bad_listen(listen: str) -> None:
    with pytest.raises(ConfigError, match="http.listen"):
        parse_listen(listen)


def test_ipv6_listen() -> None:
    assert parse_listen("[::1]:9464") == ("::1", 9464)
