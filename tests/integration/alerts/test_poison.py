"""One alert that cannot be rendered or sent never blocks the others: real
SMTP, SQLite and PostgreSQL. A key id with CR/LF (left in the database by
an older keyd, or arriving by any path that skips the key-file parser)
used to make the renderer raise, which aborted the whole drain: no mail
and no webhook for any key, and the poison row never reached ``failed``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from email.message import EmailMessage

import pytest

from keyd.actions.deliver import drain_outbox
from keyd.clients.smtp import SmtpClient
from keyd.report.mail import render_message
from keyd.store.alerts import AlertRecord
from keyd.store.engine import make_engine
from tests.integration.alerts.conftest import EXPIRY, AlertWorld

pytestmark = pytest.mark.smtp
DAY = timedelta(days=1)
POISON = "555\r\nBcc: victim@example.org"


def test_crlf_in_a_key_id_is_escaped_and_every_mail_goes_out(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 4 * DAY)
    world.add_key(POISON, "svc\u202eevil")
    world.add_key("292834923480293", "svc-good")
    world.step()

    subjects = sorted(world.subjects())
    assert len(subjects) == 2
    assert any("key 555\\r\\nBcc: victim@example.org of user svc\\u202eevil" in s for s in subjects)
    for received in world.inbox():
        assert received.rcpt_tos == ("ops@example.org",)  # no injected Bcc
        assert received.message["Bcc"] is None
        assert b"\r\nBcc:" not in received.raw.split(b"\r\n\r\n", 1)[0]
    assert {d.state for d in world.deliveries()} == {"sent"}


def test_an_alert_that_cannot_be_rendered_is_failed_and_the_rest_is_sent(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 3 * DAY)
    world.add_key("100", "svc-poison")
    world.add_key("200", "svc-good")
    world.evaluate()

    def render(alerts: Sequence[AlertRecord], *, sender: str, to: Sequence[str]) -> EmailMessage:
        if any(a.context.get("key_id") == "100" for a in alerts):
            raise UnicodeEncodeError("utf-8", "\udb37", 0, 1, "surrogates not allowed")
        return render_message(alerts, sender=sender, to=to)

    email = world.config.alerts.email
    assert email is not None
    engine = make_engine(world.url)
    try:
        report = drain_outbox(
            engine, world.config, world.clock, lambda: SmtpClient(email), None, render=render
        )
    finally:
        engine.dispose()
    assert report.sent == 1 and report.failed == 1 and report.gave_up == 1
    assert [s.split("] ")[1] for s in world.subjects()] == ["key 200 of user svc-good expires in 3 days"]
    by_key = {json.loads(a.context)["key_id"]: a for a in world.alerts()}
    states = {d.alert_id: (d.state, d.last_error) for d in world.deliveries()}
    state, error = states[by_key["100"].id]
    assert state == "failed"
    assert error is not None and error.startswith("email alert cannot be rendered: UnicodeEncodeError")
    assert states[by_key["200"].id] == ("sent", None)


def test_a_key_whose_alerts_cannot_be_decided_is_recorded_and_the_rest_go_on(
    world: AlertWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import select

    from keyd.actions import alerts as alerts_mod
    from keyd.store.models import Event

    world.clock.set(EXPIRY - 3 * DAY)
    world.add_key("100", "svc-poison")
    world.add_key("200", "svc-good")
    real = alerts_mod._key_alerts

    def key_alerts(config: object, key: object, *a: object, **k: object) -> object:
        if getattr(key, "key_id", None) == "100":
            raise OverflowError("date value out of range")
        return real(config, key, *a, **k)  # type: ignore[arg-type, func-returns-value]

    monkeypatch.setattr(alerts_mod, "_key_alerts", key_alerts)
    world.step()
    assert [s.split("] ")[1] for s in world.subjects()] == ["key 200 of user svc-good expires in 3 days"]
    events = world.engine_do(
        lambda s: [
            (e.key_id, e.kind, e.detail) for e in s.scalars(select(Event).where(Event.kind == "alert.error"))
        ]
    )
    assert events == [
        (
            "100",
            "alert.error",
            json.dumps({"error": "internal error while deciding alerts (OverflowError); run with --debug"}),
        )
    ]
