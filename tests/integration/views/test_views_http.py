"""The page routes over real HTTP on a real inventory (a real scan), on
SQLite and PostgreSQL: ``/api/v1/status`` is byte-for-byte the document
``keyd status --json --at`` prints, the pages show probes, alerts, sinks
and events of a key, and never a key, a token or a webhook's URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.orm import Session

from keyd.cli import main
from keyd.clock import FakeClock
from keyd.config import load_config
from keyd.report.http import ObservabilityServer
from keyd.report.metrics import KeydMetrics
from keyd.runtime.views import StatusViews
from keyd.runtime.wiring import build_services
from keyd.store import views
from keyd.store.models import Alert, Delivery, Event, Probe, Rotation, TokenSink
from keyd.timeutil import isoformat_z
from tests.support.keyfiles import PEM_MARKER, write_keyfile

AT = datetime.now(UTC).replace(microsecond=0)
HOOK = "https://hooks.example/services/T000/B000/very-secret-hook-token"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJl"


@pytest.fixture
def inventory(tmp_path: Path, db_url: str) -> Path:
    keys = tmp_path / "keys"
    write_keyfile(keys / "a.json", "key-a", "svc-a", expires=AT + timedelta(days=90))
    write_keyfile(keys / "b.json", "key/b <i>", "svc-b", expires=AT + timedelta(days=3))
    write_keyfile(keys / "c.json", "key-c", "svc-c", expires=AT - timedelta(days=1))
    config = tmp_path / "keyd.toml"
    config.write_text(
        f'timezone = "Europe/Zurich"\n[database]\nurl = "{db_url}"\n'
        f'[[sources]]\ntype = "directory"\npath = "{keys}"\n'
        '[alerts]\nthresholds = ["30d", "7d", "1d"]\n'
    )
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert main(["--config", str(config), "scan"]) == 0
    return config


def _history(config: Path) -> None:
    """Probes, an alert with an email and a webhook delivery, a token sink."""
    services = build_services(load_config(config), FakeClock(AT))
    try:
        with Session(services.engine) as session, session.begin():
            pk = views.key_pk(services.engine, "key/b <i>")
            assert pk is not None
            session.add_all(
                [
                    Probe(
                        key_pk=pk,
                        at=AT - timedelta(hours=2),
                        outcome="unavailable",
                        message=f"issuer said 503 with {TOKEN}",
                        latency_ms=12.0,
                        attempts=3,
                    ),
                    Probe(key_pk=pk, at=AT - timedelta(hours=1), outcome="ok", latency_ms=8.0),
                    TokenSink(
                        key_pk=pk,
                        mount="secret",
                        path="zitadel/tokens/svc-b",
                        state="conflict",
                        updated_at=AT,
                        last_error="another writer holds version 7",
                    ),
                ]
            )
            alert = Alert(
                about="key/b <i>",
                fingerprint="f" * 64,
                key_pk=pk,
                kind="expiring",
                threshold="7d@x",
                severity="warning",
                created_at=AT - timedelta(minutes=5),
                message_id="<m@keyd>",
                subject="key expires in 3 days",
                context="{}",
            )
            session.add(alert)
            session.flush()
            session.add_all(
                [
                    Delivery(
                        alert_id=alert.id,
                        channel="email",
                        recipient="ops@example.org",
                        state="sent",
                        attempts=1,
                        next_attempt_at=AT,
                        sent_at=AT,
                    ),
                    Delivery(
                        alert_id=alert.id,
                        channel="webhook",
                        recipient=HOOK,
                        state="failed",
                        attempts=4,
                        next_attempt_at=AT,
                        last_error=f"POST {HOOK}: 500",
                    ),
                    Rotation(
                        old_key_id="key-c",
                        principal="svc-c",
                        state="failed",
                        reason="due",
                        algorithm="RSA-2048",
                        new_key_id="key-d",
                        planned_at=AT,
                        updated_at=AT,
                        failed_step="proof",
                        last_error=f"token {TOKEN} refused",
                    ),
                    Event(
                        at=AT,
                        key_id="key/b <i>",
                        kind="token.refused",
                        source=None,
                        detail=json.dumps({"path": "zitadel/tokens/svc-b"}),
                    ),
                ]
            )
    finally:
        services.close()


@pytest.fixture
def client(inventory: Path) -> Iterator[httpx.Client]:
    _history(inventory)
    services = build_services(load_config(inventory), FakeClock(AT))
    server = ObservabilityServer(
        "127.0.0.1:0",
        KeydMetrics(services.engine, version="t"),
        lambda: (True, "ok"),
        lambda: (True, {}),
        views=StatusViews(lambda: services),
    )
    server.start()
    host, port = server.address
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as http:
            yield http
    finally:
        server.close()
        services.close()


def test_api_is_keyd_status_json(
    inventory: Path, client: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["--config", str(inventory), "status", "--json", "--at", isoformat_z(AT)]) == 0
    printed = json.loads(capsys.readouterr().out)
    response = client.get("/api/v1/status")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == printed
    assert printed["schema"] == "keyd.status/1" and printed["at"] == isoformat_z(AT)
    assert [k["key_id"] for k in printed["keys"]] == ["key-a", "key/b <i>", "key-c"]


def test_index_and_key_pages(client: httpx.Client) -> None:
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert "script-src 'sha256-" in index.headers["content-security-policy"]
    assert index.text.count('class="mark ') == 3
    assert "key/b &lt;i&gt;" in index.text and "<i>" not in index.text
    assert "zitadel/tokens/svc-b for key key/b &lt;i&gt;: refused (conflict)" in index.text
    assert "token.refused" in index.text
    page = client.get("/keys/" + quote("key/b <i>", safe=""))
    assert page.status_code == 200
    for text in (
        "unavailable",
        "issuer said 503 with [redacted]",
        "8 ms",
        "key expires in 3 days",
        "email: sent",
        "webhook: failed (4 attempts)",
        "secret/zitadel/tokens/svc-b",
        "another writer holds version 7",
    ):
        assert text in page.text, text
    assert "failed (proof) → key-d" in index.text  # the rotation column
    rotated = client.get("/keys/key-c").text
    assert "this key is being replaced" in rotated and "token [redacted] refused" in rotated
    assert client.get("/keys/nope").status_code == 404
    assert client.get("/keys/%ff%fe").status_code == 404


def test_pages_never_show_secrets(client: httpx.Client) -> None:
    bodies = [
        client.get(p).text
        for p in ("/", "/api/v1/status", "/keys/key-a", "/keys/key-c", "/keys/" + quote("key/b <i>", safe=""))
    ]
    for body in bodies:
        assert PEM_MARKER not in body
        assert TOKEN not in body
        assert "very-secret-hook-token" not in body and "ops@example.org" not in body


def test_page_follows_the_clock(inventory: Path, client: httpx.Client) -> None:
    """Days left and the verdict are computed at the services' clock."""
    page = client.get("/").text
    assert "KEYD CRITICAL - 1 expired" in page
    rows = client.get("/api/v1/status").json()["keys"]
    assert [r["days_left"] for r in rows] == [90, 3, -1]
