"""The ladder end to end: DB rows → outbox → a real SMTP inbox, with a
restart (fresh engine) at every step, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from keyd.store.alerts import outbox_summary
from tests.integration.alerts.conftest import EXPIRY, START, AlertWorld

pytestmark = pytest.mark.smtp
D = timedelta(days=1)
KEY = "292834923480293"
USER = "292834923480001"


def _expected_subjects() -> list[str]:
    who = f"key {KEY} of user {USER}"
    # Each rung is due at 23:00 and decided at the next 6-hourly step, an
    # hour later: whole days left, rounded down as `keyd status` counts them.
    return [
        f"[keyd INFO] {who} expires in 29 days",
        f"[keyd WARNING] {who} expires in 13 days",
        f"[keyd WARNING] {who} expires in 6 days",
        f"[keyd CRITICAL] {who} expires in 2 days",
        f"[keyd CRITICAL] {who} expires in 23h",
        f"[keyd CRITICAL] {who} has expired",
    ]


def test_forty_days_of_ladder(world: AlertWorld) -> None:
    world.add_key(KEY, USER, ref="/etc/keyd/keys/<svc>&co.json")
    assert EXPIRY - START > 30 * D
    world.run(until=START + 40 * D, every=timedelta(hours=6))

    assert world.subjects() == _expected_subjects()
    inbox = world.inbox()
    assert all(r.rcpt_tos == ("ops@example.org",) for r in inbox)
    ids = [str(r.message["Message-ID"]) for r in inbox]
    assert ids[2] == f"<alert-key-{KEY}-expiring-7d-2026-12-31t23-00-00z@keyd>"
    assert len(set(ids)) == 6

    msg = inbox[3].message  # the 3-day warning
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["From"] == "keyd@example.org" and msg["To"] == "ops@example.org"
    assert msg["Auto-Submitted"] == "auto-generated"
    plain = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for body in (plain, html):
        assert "2026-12-31T23:00:00Z" in body  # the instant, UTC
        assert "2026-12-31 (Europe/Zurich)" in body  # last usable local day
        assert "Users → Service Users → 292834923480001 → Keys → New" in body
        assert "keyd inspect" in body and "keyd status" in body
    assert "/etc/keyd/keys/<svc>&co.json" in plain
    assert "/etc/keyd/keys/&lt;svc&gt;&amp;co.json" in html and "<svc>" not in html

    summary = world.engine_do(outbox_summary)
    assert summary == {"pending": 0, "failed": 0, "oldest_pending_at": None}
    assert all(d.state == "sent" and d.attempts == 1 for d in world.deliveries())


def test_first_seen_inside_seven_days_is_one_alert(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 5 * D)
    world.add_key(KEY, USER)
    world.step()
    world.step()
    assert world.subjects() == [f"[keyd WARNING] key {KEY} of user {USER} expires in 5 days"]
    world.run(until=EXPIRY + D, every=timedelta(hours=6))
    assert [s.split("] ")[0] for s in world.subjects()] == [
        "[keyd WARNING",
        "[keyd CRITICAL",
        "[keyd CRITICAL",
        "[keyd CRITICAL",
    ]
    assert world.subjects()[-1].endswith("has expired")


@pytest.mark.slow
def test_smtp_down_for_a_day(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 8 * D)
    for n in range(5):
        world.add_key(f"{KEY}{n}", f"{USER}{n}")
    world.server.stop()
    world.run(until=EXPIRY - 6 * D, every=timedelta(minutes=30))  # 7d rung decided while down
    summary = world.engine_do(outbox_summary)
    assert summary["pending"] + summary["failed"] == 5
    assert summary["oldest_pending_at"] == EXPIRY - 7 * D
    assert world.inbox() == []
    world.server.start()
    world.run(until=EXPIRY - 4 * D, every=timedelta(minutes=45))
    counts = Counter(str(r.message["Message-ID"]) for r in world.inbox())
    assert len(counts) == 5 and set(counts.values()) == {1}
    assert world.engine_do(outbox_summary)["pending"] == 0
    states = Counter(d.state for d in world.deliveries())
    assert states == {"sent": 5, "superseded": 5}  # the 14d rungs decided at 8 days: stale
    assert all("-7d-" in str(r.message["Message-ID"]) for r in world.inbox())


def test_expiry_change_rearms_the_ladder(world: AlertWorld) -> None:
    world.add_key(KEY, USER)
    world.run(until=EXPIRY - 10 * D, every=timedelta(hours=6))  # 30d and 14d fired
    assert len(world.subjects()) == 2
    new_expiry = EXPIRY + 60 * D
    world.update_key(KEY, expires_at=new_expiry)
    world.run(until=new_expiry - 31 * D, every=timedelta(hours=6))
    assert len(world.subjects()) == 2  # the old expiry's 7d/3d/1d/expired never fire
    old = [a for a in world.alerts() if a.expires_at == EXPIRY]
    assert old and all(a.resolved_at is not None for a in old)
    world.run(until=new_expiry - 29 * D, every=timedelta(hours=6))
    assert world.subjects()[-1].endswith("expires in 29 days")
    assert (world.alerts()[-1].threshold, world.alerts()[-1].expires_at) == ("30d", new_expiry)


def test_digest_mode_sends_one_message_per_run(world: AlertWorld) -> None:
    world.with_alerts(digest=True)
    world.clock.set(EXPIRY - 2 * D)
    world.add_key("111", "u1")
    world.add_key("222", "u2", expires_at=EXPIRY + 10 * D)
    world.add_key("333", "u3", expires_at=None)
    world.step()
    (received,) = world.inbox()
    msg = received.message
    assert msg["Subject"] == "[keyd CRITICAL] 3 key alerts"
    plain = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "key 111 of user u1 expires in 2 days" in plain
    assert "key 222 of user u2 expires in 12 days" in plain
    assert "key 333 of user u3 has no expiry date" in plain
    world.step()
    assert len(world.inbox()) == 1


def test_routes_add_recipients(world: AlertWorld) -> None:
    email = world.config.alerts.email
    assert email is not None
    from dataclasses import replace

    world.with_alerts(
        email=replace(
            email,
            routes=(
                ("u1", ("team-a@example.org", "OPS@example.org")),
                ("directory:/etc/keyd/keys", ("keys@example.org",)),
            ),
        )
    )
    world.clock.set(EXPIRY - 2 * D)
    world.add_key("111", "u1")
    world.step()
    assert sorted(r.rcpt_tos[0] for r in world.inbox()) == [
        "keys@example.org",
        "ops@example.org",
        "team-a@example.org",
    ]
    assert len({str(r.message["Message-ID"]) for r in world.inbox()}) == 1
