"""Drain the alert outbox: send due deliveries, record the outcome.

Each due ``deliveries`` row is first *claimed* (compare-and-set that counts
the attempt and pushes ``next_attempt_at`` out by ``LEASE``), then sent,
then marked ``sent``, each step in its own short transaction. So:

* two daemons draining at once never send the same row twice;
* a crash after sending but before marking it sent repeats that one
  message after the lease (same ``Message-ID``, so mail clients fold it);
  nothing is ever lost;
* a failure keeps the row open with exponential backoff, full jitter
  (``retry.backoff_delay``, ``BASE`` 1 min, ``CAP`` 1 h).

Retry budget (documented in the README): after ``MAX_ATTEMPTS`` failed
attempts, or at once for a permanent error (authentication refused,
recipient rejected, 4xx from the webhook), the row turns ``failed``: it is
counted as a problem by ``keyd status`` and metrics but is *still retried*
(``CAP`` after a permanent error, daily after the budget). Whenever a send
on a channel succeeds again, that channel's ``failed`` rows are woken up so
they go out on the next drain.

Unsent ``expiring``/``expired`` alerts that were resolved meanwhile (a
tighter rung fired, the expiry changed, the key was rotated) are marked
``superseded`` instead of sent: no burst of stale rungs after an outage.

Digest mode (``alerts.digest``): one e-mail per recipient per drain,
listing every alert due for that recipient.

Rendering belongs to ``report.mail`` (a higher layer), so it is injected:
``drain_outbox(..., render=keyd.report.mail.render_message)``.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Final, Protocol

from keyd.clients.smtp import MailSender
from keyd.clients.webhook import WebhookSender
from keyd.clock import Clock
from keyd.config import Config
from keyd.errors import KeydError, MailError
from keyd.redact import scrub
from keyd.retry import Random, backoff_delay
from keyd.store import alerts as store
from keyd.store.alerts import AlertRecord, OutboxItem, threshold_text
from keyd.text import escape
from keyd.timeutil import isoformat_z
from keyd.urls import display_url
from keyd.vocab import AlertKind, Channel, DeliveryState

if TYPE_CHECKING:
    from keyd.store.alerts import Engine

log = logging.getLogger(__name__)

BASE: Final = timedelta(minutes=1)
CAP: Final = timedelta(hours=1)
MAX_ATTEMPTS: Final = 24
FAILED_RETRY: Final = timedelta(days=1)
LEASE: Final = timedelta(minutes=10)
_CONNECTION_STAGES: Final = frozenset({"connect", "tls", "auth"})


class Render(Protocol):
    def __call__(self, alerts: Sequence[AlertRecord], *, sender: str, to: Sequence[str]) -> EmailMessage:
        """One message for one alert, a digest for several."""


@dataclass
class DrainReport:
    """What one drain did (for logs, ``keyd check`` and metrics)."""

    sent: int = 0  # deliveries marked sent
    messages: int = 0  # e-mails / POSTs that went out (digest: fewer than sent)
    failed: int = 0  # deliveries whose attempt failed (still open)
    gave_up: int = 0  # of those, now in state "failed" (retried less often)
    raced: int = 0  # due rows another drainer claimed first
    superseded: int = 0  # unsent ladder alerts replaced by a tighter rung: dropped
    errors: list[str] = field(default_factory=list)


class _NotConfigured(KeydError):
    def __init__(self, channel: str) -> None:
        super().__init__(f"{channel} alerts are queued but [alerts.{channel}] is not configured")


class Undeliverable(KeydError):
    """One delivery cannot be rendered or sent for a reason that a retry
    cannot fix (a bug, or data no message can carry). It is marked
    ``failed`` with this reason; every other delivery goes on."""

    def __init__(self, channel: str, step: str, exc: BaseException) -> None:
        detail = escape(scrub(str(exc)))[:200]
        super().__init__(
            f"{channel} alert cannot be {step}: {type(exc).__name__}" + (f": {detail}" if detail else "")
        )


def drain_outbox(
    engine: Engine,
    config: Config,
    clock: Clock,
    smtp_factory: Callable[[], MailSender] | None,
    webhook: WebhookSender | None,
    *,
    render: Render,
    rng: Random | None = None,
    limit: int = 500,
) -> DrainReport:
    """Send every open delivery whose ``next_attempt_at`` ≤ now (see module doc).

    ``smtp_factory`` makes one connection per drain (lazily, only if e-mail
    is due); ``webhook`` may be None when no webhook is configured.
    """
    rng = rng or random.SystemRandom()
    report = DrainReport()
    now = clock.now()
    with store.transaction(engine) as session:
        due = store.due_deliveries(session, now, limit)
    claimed: list[OutboxItem] = []
    for item in due:
        with store.transaction(engine) as session:
            if _superseded(item):
                store.mark_superseded(session, item.delivery_id)
                report.superseded += 1
                continue
            ok = store.claim_delivery(session, item.delivery_id, item.attempts, now, now + LEASE)
        if ok:
            claimed.append(item)
        else:
            report.raced += 1
    out = _Outcomes(engine, clock, rng, report)
    _send_email([i for i in claimed if i.channel == Channel.EMAIL], config, smtp_factory, render, out)
    _send_webhooks([i for i in claimed if i.channel == Channel.WEBHOOK], webhook, out)
    if claimed:
        log.info(
            "outbox: %d sent in %d message(s), %d failed (%d given up), %d raced",
            report.sent,
            report.messages,
            report.failed,
            report.gave_up,
            report.raced,
        )
    return report


def shown_recipient(item: OutboxItem) -> str:
    """The recipient as logs and plans show it: a webhook through
    ``display_url`` (rows stored before that rule may hold the whole URL)."""
    return display_url(item.recipient) if item.channel == Channel.WEBHOOK else item.recipient


def _superseded(item: OutboxItem) -> bool:
    """An unsent ladder alert that was resolved (a tighter rung, a new expiry
    or a rotation replaced it) is not sent: after an outage the operator
    gets the current rung, not a burst of stale ones."""
    return item.alert.resolved_at is not None and item.alert.kind in (AlertKind.EXPIRING, AlertKind.EXPIRED)


def _send_email(
    items: list[OutboxItem],
    config: Config,
    smtp_factory: Callable[[], MailSender] | None,
    render: Render,
    out: _Outcomes,
) -> None:
    if not items:
        return
    email = config.alerts.email
    if email is None or smtp_factory is None:
        out.failed(items, _NotConfigured(Channel.EMAIL))
        return
    groups: dict[str, list[OutboxItem]] = defaultdict(list)
    for item in items:  # digest: one message per recipient; else one per delivery
        groups[item.recipient if config.alerts.digest else str(item.delivery_id)].append(item)
    sender: MailSender | None = None
    down: MailError | None = None
    try:
        for group in groups.values():
            if down is not None:  # server unreachable: do not hammer it per message
                out.failed(group, down)
                continue
            recipient = group[0].recipient
            try:
                message = render([i.alert for i in group], sender=email.from_addr, to=[recipient])
            except Exception as exc:  # noqa: BLE001 - one poison alert never blocks the rest
                log.exception("cannot render alert e-mail to %s", escape(recipient))
                out.failed(group, Undeliverable("email", "rendered", exc))
                continue
            try:
                sender = sender or smtp_factory()
                sender.send(message, [recipient])
            except MailError as exc:
                out.failed(group, exc)
                down = exc if exc.stage in _CONNECTION_STAGES else None
                continue
            except Exception as exc:  # noqa: BLE001 - as above: recorded on this delivery
                log.exception("cannot send alert e-mail to %s", escape(recipient))
                out.failed(group, Undeliverable(Channel.EMAIL, "sent", exc))
                continue
            out.sent(group, Channel.EMAIL)
    finally:
        if sender is not None:
            sender.close()


def _send_webhooks(items: list[OutboxItem], webhook: WebhookSender | None, out: _Outcomes) -> None:
    for item in items:
        if webhook is None:
            out.failed([item], _NotConfigured(Channel.WEBHOOK))
            continue
        try:
            webhook.post(webhook_payload(item.alert))
        except KeydError as exc:
            out.failed([item], exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one poison alert never blocks the rest
            log.exception("cannot post alert %s to the webhook", escape(item.alert.message_id))
            out.failed([item], Undeliverable(Channel.WEBHOOK, "posted", exc))
            continue
        out.sent([item], Channel.WEBHOOK)


def webhook_payload(alert: AlertRecord) -> dict[str, Any]:
    """The JSON a webhook receives: the alert's facts (never secrets)."""
    return {
        "source": "keyd",
        "message_id": alert.message_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "threshold": threshold_text(alert.threshold, alert.expires_at),  # as before 0002: "7d@<expiry>"
        "subject": alert.subject,
        "created_at": isoformat_z(alert.created_at),
        "facts": dict(alert.context),
    }


class _Outcomes:
    """Records sends and failures, one short transaction each."""

    def __init__(self, engine: Engine, clock: Clock, rng: Random, report: DrainReport) -> None:
        self.engine, self.clock, self.rng, self.report = engine, clock, rng, report

    def sent(self, group: Sequence[OutboxItem], channel: str) -> None:
        now = self.clock.now()
        with store.transaction(self.engine) as session:
            for item in group:
                store.mark_sent(session, item.delivery_id, now)
            store.wake_failed(session, channel, now)
        self.report.sent += len(group)
        self.report.messages += 1
        for item in group:
            log.info(
                "sent %s alert %s to %s (attempt %d)",
                item.channel,
                item.alert.message_id,
                shown_recipient(item),
                item.attempts + 1,
            )

    def failed(self, group: Sequence[OutboxItem], exc: KeydError) -> None:
        now = self.clock.now()
        with store.transaction(self.engine) as session:
            for item in group:
                state, when = self._next(item.attempts + 1, exc.retryable, now)
                store.mark_retry(session, item.delivery_id, state=state, next_attempt_at=when, error=str(exc))
                self.report.failed += 1
                self.report.gave_up += state == DeliveryState.FAILED
                log.warning(
                    "%s alert %s to %s: attempt %d failed: %s; next attempt at %s (%s)",
                    item.channel,
                    item.alert.message_id,
                    shown_recipient(item),
                    item.attempts + 1,
                    exc,
                    when.isoformat(),
                    state,
                )
        self.report.errors.append(str(exc))

    def _next(self, attempt: int, retryable: bool, now: datetime) -> tuple[str, datetime]:
        if attempt >= MAX_ATTEMPTS:
            return DeliveryState.FAILED, now + FAILED_RETRY
        if not retryable:
            return DeliveryState.FAILED, now + CAP
        delay = backoff_delay(attempt, BASE, CAP, self.rng)
        return DeliveryState.PENDING, now + timedelta(seconds=max(delay, 1.0))
