"""keyd.actions.deliver: the outbox drain on SQLite and PostgreSQL with fake
channels: claims, backoff, budget, crash-after-send, webhook, digest."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from keyd.actions import deliver
from keyd.actions.deliver import CAP, FAILED_RETRY, LEASE, MAX_ATTEMPTS, drain_outbox
from keyd.clients.webhook import WebhookClient
from keyd.clock import FakeClock
from keyd.config import AlertsConfig, Config, EmailConfig, WebhookConfig
from keyd.errors import MailError
from keyd.report.mail import render_message
from keyd.store import alerts as store
from keyd.store.models import Delivery

NOW = datetime(2026, 12, 1, tzinfo=UTC)
EMAIL = EmailConfig(host="smtp.example", from_addr="keyd@example.org", to=("ops@example.org",))


class FakeSender:
    def __init__(self, fail: list[MailError] | None = None) -> None:
        self.sent: list[tuple[EmailMessage, tuple[str, ...]]] = []
        self.fail = list(fail or [])
        self.closed = 0

    def send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append((message, tuple(recipients)))

    def close(self) -> None:
        self.closed += 1


def _config(**alerts: object) -> Config:
    return Config(alerts=AlertsConfig(email=EMAIL, **alerts))  # type: ignore[arg-type]


def _queue(
    engine: Engine, n: int = 1, recipients: Sequence[str] = ("ops@example.org",), channel: str = "email"
) -> None:
    with store.transaction(engine) as s:
        for i in range(n):
            alert = store.insert_alert(
                s,
                about=f"fp{i}",
                key_pk=None,
                kind="expiring",
                threshold="7d",
                expires_at=datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=i),
                severity="warning",
                created_at=NOW,
                message_id=f"<alert-fp{i}@keyd>",
                subject=f"[keyd WARNING] key {i} expires in 7 days",
                context={"key_id": str(i)},
            )
            assert alert is not None
            store.add_deliveries(s, alert.id, [(channel, r) for r in recipients], NOW)


def _rows(engine: Engine) -> list[Delivery]:
    with store.transaction(engine) as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def _drain(
    engine: Engine,
    clock: FakeClock,
    sender: FakeSender,
    config: Config | None = None,
    webhook: WebhookClient | None = None,
) -> deliver.DrainReport:
    return drain_outbox(
        engine,
        config or _config(),
        clock,
        lambda: sender,
        webhook,
        render=render_message,
        rng=random.Random(7),
    )


def test_sends_and_marks_sent(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 3)
    sender, clock = FakeSender(), FakeClock(NOW)
    report = _drain(migrated_engine, clock, sender)
    assert (report.sent, report.messages, report.failed) == (3, 3, 0)
    assert [str(m["Message-ID"]) for m, _ in sender.sent] == [
        "<alert-fp0@keyd>",
        "<alert-fp1@keyd>",
        "<alert-fp2@keyd>",
    ]
    assert sender.closed == 1
    assert all(d.state == "sent" and d.attempts == 1 and d.sent_at == NOW for d in _rows(migrated_engine))
    assert _drain(migrated_engine, clock, sender).sent == 0


def test_connection_failure_backs_off_and_stops_trying(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 3)
    down = MailError("SMTP smtp.example:587: cannot connect", stage="connect")
    sender, clock = FakeSender([down]), FakeClock(NOW)
    report = _drain(migrated_engine, clock, sender)
    assert report.failed == 3 and report.sent == 0 and sender.sent == []
    for row in _rows(migrated_engine):
        assert row.state == "pending" and row.attempts == 1
        assert NOW < row.next_attempt_at <= NOW + timedelta(minutes=1)
        assert row.last_error == "SMTP smtp.example:587: cannot connect"
    clock.advance(timedelta(hours=1))
    assert _drain(migrated_engine, clock, sender).sent == 3


def test_budget_then_failed_and_woken_by_a_success(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 1)
    down = MailError("down", stage="connect")
    clock = FakeClock(NOW)
    for _ in range(MAX_ATTEMPTS):
        _drain(migrated_engine, clock, FakeSender([down]))
        clock.advance(CAP)
    (row,) = _rows(migrated_engine)
    assert row.state == "failed" and row.attempts == MAX_ATTEMPTS
    assert row.next_attempt_at == clock.now() - CAP + FAILED_RETRY
    with store.transaction(migrated_engine) as s:
        assert store.outbox_summary(s) == {"pending": 0, "failed": 1, "oldest_pending_at": NOW}
    _queue_other(migrated_engine, clock.now())
    sender = FakeSender()
    _drain(migrated_engine, clock, sender)  # the new alert goes out and wakes the old one
    _drain(migrated_engine, clock, sender)
    assert len(sender.sent) == 2
    assert {d.state for d in _rows(migrated_engine)} == {"sent"}


def _queue_other(engine: Engine, now: datetime) -> None:
    with store.transaction(engine) as s:
        alert = store.insert_alert(
            s,
            about="other",
            key_pk=None,
            kind="expiring",
            threshold="1d@x",
            severity="critical",
            created_at=now,
            message_id="<alert-other@keyd>",
            subject="s",
            context={},
        )
        assert alert is not None
        store.add_deliveries(s, alert.id, [("email", "ops@example.org")], now)


def test_permanent_error_is_failed_at_once_but_retried(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 1)
    refused = MailError("recipient refused (550)", stage="send", retryable=False)
    clock = FakeClock(NOW)
    report = _drain(migrated_engine, clock, FakeSender([refused]))
    assert report.gave_up == 1
    (row,) = _rows(migrated_engine)
    assert row.state == "failed" and row.next_attempt_at == NOW + CAP


def test_crash_after_send_repeats_never_loses(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _queue(migrated_engine, 1)
    sender, clock = FakeSender(), FakeClock(NOW)
    real = store.mark_sent

    def crash(*args: object, **kw: object) -> None:
        raise SystemExit("killed between send and commit")

    monkeypatch.setattr(store, "mark_sent", crash)
    with pytest.raises(SystemExit):
        _drain(migrated_engine, clock, sender)
    monkeypatch.setattr(store, "mark_sent", real)
    assert _drain(migrated_engine, clock, sender).sent == 0  # leased: not yet
    clock.advance(LEASE)
    assert _drain(migrated_engine, clock, sender).sent == 1
    ids = [str(m["Message-ID"]) for m, _ in sender.sent]
    assert ids == ["<alert-fp0@keyd>", "<alert-fp0@keyd>"]  # a repeat that folds
    (row,) = _rows(migrated_engine)
    assert row.state == "sent" and row.attempts == 2


def test_claim_is_compare_and_set(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 1)
    with store.transaction(migrated_engine) as s:
        (item,) = store.due_deliveries(s, NOW)
    with store.transaction(migrated_engine) as s:
        assert store.claim_delivery(s, item.delivery_id, 0, NOW, NOW + LEASE)
    with store.transaction(migrated_engine) as s:
        assert not store.claim_delivery(s, item.delivery_id, 0, NOW, NOW + LEASE)


def test_digest_one_message_per_recipient(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 3, recipients=("ops@example.org", "dev@example.org"))
    sender = FakeSender()
    report = _drain(migrated_engine, FakeClock(NOW), sender, _config(digest=True))
    assert report.sent == 6 and report.messages == 2
    assert sorted(r for _, (r,) in sender.sent) == ["dev@example.org", "ops@example.org"]
    assert all(m["Subject"] == "[keyd WARNING] 3 key alerts" for m, _ in sender.sent)


def test_webhook_channel(migrated_engine: Engine) -> None:
    url = "https://hooks.example.org/secret/path"
    _queue(migrated_engine, 1, recipients=("https://hooks.example.org/…",), channel="webhook")
    posted: list[dict[str, object]] = []
    statuses = [503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(statuses.pop(0))

    config = _config(webhook=WebhookConfig(url=url))
    clock = FakeClock(NOW)
    with WebhookClient(WebhookConfig(url=url), transport=httpx.MockTransport(handler)) as hook:
        assert _drain(migrated_engine, clock, FakeSender(), config, hook).failed == 1
        clock.advance(CAP)
        assert _drain(migrated_engine, clock, FakeSender(), config, hook).sent == 1
    assert posted[1]["message_id"] == "<alert-fp0@keyd>"
    assert posted[1]["facts"] == {"key_id": "0"}
    assert posted[1]["kind"] == "expiring" and posted[1]["severity"] == "warning"
    assert posted[1]["threshold"] == "7d@2027-01-01T00:00:00Z"  # the rung and its expiry, as ever


def test_channel_not_configured_keeps_the_row(migrated_engine: Engine) -> None:
    _queue(migrated_engine, 1, channel="webhook", recipients=("x",))
    report = _drain(migrated_engine, FakeClock(NOW), FakeSender())
    assert report.failed == 1
    (row,) = _rows(migrated_engine)
    assert row.state == "failed" and "not configured" in (row.last_error or "")
