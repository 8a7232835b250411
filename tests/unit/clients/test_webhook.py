"""keyd.clients.webhook with httpx.MockTransport."""

from __future__ import annotations

import json

import httpx
import pytest

from keyd.clients.webhook import WebhookClient, WebhookError
from keyd.config import WebhookConfig
from keyd.urls import display_url

URL = "https://hooks.example.org/services/T000/B000/SECRETPATH"


class Recorder:
    def __init__(self, status: int = 200, exc: Exception | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.exc = status, exc

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.exc is not None:
            raise self.exc
        return httpx.Response(self.status, json={"ok": self.status < 300})


def _client(rec: Recorder) -> WebhookClient:
    return WebhookClient(WebhookConfig(url=URL), transport=httpx.MockTransport(rec))


def test_posts_json() -> None:
    rec = Recorder()
    with _client(rec) as client:
        client.post({"kind": "expiring", "facts": {"key_id": "1"}})
    (req,) = rec.requests
    assert req.method == "POST" and str(req.url) == URL
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.content) == {"kind": "expiring", "facts": {"key_id": "1"}}


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (404, False)]
)
def test_status_errors(status: int, retryable: bool) -> None:
    with _client(Recorder(status)) as client, pytest.raises(WebhookError) as info:
        client.post({})
    assert info.value.status == status and info.value.retryable is retryable
    assert "SECRETPATH" not in str(info.value)
    assert str(info.value) == f"webhook https://hooks.example.org/…: answered HTTP {status}"


def test_connection_error_is_retryable() -> None:
    rec = Recorder(exc=httpx.ConnectError("refused"))
    with _client(rec) as client, pytest.raises(WebhookError) as info:
        client.post({})
    assert info.value.retryable and "cannot connect" in str(info.value)


def test_display_url_hides_the_path() -> None:
    assert display_url("http://127.0.0.1:8080/x/y?token=1") == "http://127.0.0.1:8080/…"
