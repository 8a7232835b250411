"""Total deadlines (keyd.clients.deadline) against a real loopback peer
that drips its answer one byte at a time: a per-read timeout never trips,
the total deadline does, for httpx (issuer, webhook) and requests (hvac)
alike. Asserts the order of events, never a duration."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpcore
import httpx
import pytest
import requests

from keyd.clients import deadline as deadline_module
from keyd.clients.deadline import (
    DeadlineAdapter,
    DeadlineBackend,
    deadline_client,
    deadline_transport,
    within,
)
from keyd.clients.smtp import SmtpClient
from keyd.clients.vault import VaultClient
from keyd.clients.webhook import WebhookClient, WebhookError
from keyd.clock import SystemClock
from keyd.config import EmailConfig, VaultConfig, WebhookConfig
from keyd.errors import MailError, VaultUnavailable
from keyd.redact import Secret
from tests.support.drip import HTTP_ANSWER, SMTP_GREETING, Dripper


@pytest.fixture
def dripper() -> Iterator[Dripper]:
    with Dripper(HTTP_ANSWER) as peer:
        yield peer


def test_httpx_request_ends_at_the_total_deadline(dripper: Dripper) -> None:
    with httpx.Client(transport=deadline_transport(), timeout=5.0) as client:
        with within(1.0, "drip") as deadline, pytest.raises(httpx.TimeoutException):
            client.get(dripper.url + "/").read()
    assert deadline.expired and not dripper.finished.is_set()


def test_a_clamped_timeout_counts_as_the_deadline_before_the_watchdog_runs(
    dripper: Dripper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine the socket timeout (clamped to the time left)
    can end the read before the watchdog thread fires: the failure is
    still the deadline's, not the peer's (seen as a flaky 'not expired')."""
    monkeypatch.setattr(deadline_module._WATCHDOG, "watch", lambda deadline: -1)  # never fires
    with httpx.Client(transport=deadline_transport(), timeout=5.0) as client:
        with within(0.5, "drip") as deadline, pytest.raises(httpx.TimeoutException):
            client.get(dripper.url + "/").read()
    assert deadline.expired and not dripper.finished.is_set()


def test_requests_call_ends_at_the_total_deadline(dripper: Dripper) -> None:
    session = requests.Session()
    session.mount("http://", DeadlineAdapter())
    with within(1.0, "drip") as deadline, pytest.raises(requests.RequestException):
        session.get(dripper.url + "/", timeout=5.0)
    assert deadline.expired and not dripper.finished.is_set()
    session.close()


def test_without_a_deadline_nothing_changes() -> None:
    transport = deadline_transport()
    assert isinstance(transport._pool._network_backend, DeadlineBackend)  # httpx internals held
    assert DeadlineBackend()._inner.__class__ is httpcore.SyncBackend


def test_nested_deadlines_keep_the_tighter_one() -> None:
    with within(1.0, "outer") as outer, within(60.0, "inner") as inner:
        assert inner.remaining() <= outer.remaining() + 0.01


# --- each client of keyd, against a dripping peer ---------------------------


def test_vault_client_gives_up_on_a_dripping_server() -> None:
    cfg = VaultConfig(addr="", token=Secret("t"), timeout=timedelta(seconds=1))
    with Dripper(HTTP_ANSWER) as peer:
        with VaultClient(replace(cfg, addr=peer.url), SystemClock()) as vault:
            with pytest.raises(VaultUnavailable, match="no complete answer within 1s"):
                vault.health()
        assert not peer.finished.is_set()


def test_smtp_client_gives_up_on_a_dripping_greeting() -> None:
    with Dripper(SMTP_GREETING, greets=True) as peer:
        cfg = EmailConfig(
            host="127.0.0.1",
            port=peer.port,
            from_addr="keyd@test.example",
            to=("ops@test.example",),
            security="none",
            timeout=timedelta(seconds=1),
        )
        with SmtpClient(cfg) as smtp, pytest.raises(MailError) as caught:
            smtp.connect()
        assert "no complete answer within 1s (connecting)" in str(caught.value)
        assert caught.value.retryable and not peer.finished.is_set()


def test_webhook_gives_up_on_a_dripping_answer() -> None:
    with Dripper(HTTP_ANSWER) as peer:
        cfg = WebhookConfig(url=peer.url + "/hook/secret", timeout=timedelta(seconds=1))
        with WebhookClient(cfg) as hook, pytest.raises(WebhookError) as caught:
            hook.post({"a": 1})
        assert "no complete answer within 1s" in str(caught.value)
        assert "secret" not in str(caught.value) and not peer.finished.is_set()


def test_proxied_requests_keep_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment gets its own transport from httpx: it is
    bounded too (an HTTPS_PROXY that drips is cut off like an issuer)."""
    with Dripper(HTTP_ANSWER) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with deadline_client(timeout=5.0) as client:
            mounted = [t for t in client._mounts.values() if t is not None]
            assert mounted and all(isinstance(t._pool._network_backend, DeadlineBackend) for t in mounted)
            with within(1.0, "via proxy") as deadline, pytest.raises(httpx.TimeoutException):
                client.get("http://issuer.test/")
        assert deadline.expired and not proxy.finished.is_set()
