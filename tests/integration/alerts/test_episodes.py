"""Rotation, rejection, issuer outages, untracked keys, the canary, and two
daemons racing on one PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from keyd.actions.alerts import evaluate_alerts
from keyd.actions.deliver import drain_outbox
from keyd.clients.smtp import SmtpClient
from keyd.report.mail import render_message
from keyd.store.alerts import note_issuer_health, transaction
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from tests.integration.alerts.conftest import EXPIRY, START, AlertWorld, make_config
from tests.support.db import postgres_database
from tests.support.keyrows import dump_all
from tests.support.keys import make_key_file
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.smtp
D = timedelta(days=1)


def test_rotation_resolves_the_old_ladder_with_one_notice(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 8 * D)
    world.add_key("old", "u1")
    world.step()
    assert world.subjects() == ["[keyd WARNING] key old of user u1 expires in 8 days"]
    world.clock.advance(D)
    world.add_key("new", "u1", expires_at=EXPIRY + 365 * D)
    world.run(until=EXPIRY + 2 * D, every=timedelta(hours=6))
    subjects = world.subjects()
    assert subjects[1:] == ["[keyd INFO] key old of user u1 was replaced by key new"]
    old_alerts = [a for a in world.alerts() if a.kind in ("expiring", "expired")]
    assert len(old_alerts) == 1 and old_alerts[0].resolved_at is not None
    plain = world.inbox()[1].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "key new" in plain and "/etc/keyd/keys/old.json" in plain


def test_untouched_peer_does_not_count_as_rotation(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 2 * D)
    world.add_key("a", "u1")
    world.add_key("b", "u1", expires_at=EXPIRY + 1 * D, status="missing")
    world.step()
    assert world.subjects() == ["[keyd CRITICAL] key a of user u1 expires in 2 days"]


def test_rejected_once_per_episode(world: AlertWorld) -> None:
    world.add_key("k", "u1", expires_at=EXPIRY + 365 * D)
    world.update_key(
        "k",
        status="rejected",
        last_probe_outcome="rejected",
        last_error="invalid_grant: key revoked or unknown",
    )
    for _ in range(3):
        world.step()
        world.clock.advance(timedelta(hours=6))
    assert world.subjects() == ["[keyd CRITICAL] key k of user u1 is rejected by the issuer"]
    world.update_key("k", status="active", last_ok_at=world.clock.now())
    world.step()
    world.clock.advance(timedelta(hours=6))
    world.update_key("k", status="rejected")
    world.step()
    world.step()
    assert len(world.subjects()) == 2
    plain = world.inbox()[0].message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "invalid_grant: key revoked or unknown" in plain


def test_expired_key_is_not_also_reported_rejected(world: AlertWorld) -> None:
    world.clock.set(EXPIRY + D)
    world.add_key("k", "u1", status="rejected")
    world.step()
    assert world.subjects() == ["[keyd CRITICAL] key k of user u1 has expired"]


def test_issuer_outage_episode(world: AlertWorld) -> None:
    world.engine_do(lambda s: note_issuer_health(s, False, world.clock.now()))
    world.clock.advance(timedelta(minutes=10))
    world.engine_do(lambda s: note_issuer_health(s, False, world.clock.now()))
    world.step()
    assert world.subjects() == []
    world.clock.advance(timedelta(minutes=25))
    world.step()
    world.clock.advance(timedelta(hours=2))
    world.engine_do(lambda s: note_issuer_health(s, False, world.clock.now()))
    world.step()
    assert world.subjects() == ["[keyd WARNING] issuer https://issuer.example unavailable for 35m"]
    world.engine_do(lambda s: note_issuer_health(s, True, world.clock.now()))
    world.step()
    world.engine_do(lambda s: note_issuer_health(s, True, world.clock.now()))
    world.step()
    assert world.subjects()[1] == (
        "[keyd INFO] issuer https://issuer.example is reachable again after 2h 35m"
    )
    assert len(world.subjects()) == 2
    # a short blip afterwards: no alert at all
    world.engine_do(lambda s: note_issuer_health(s, False, world.clock.now()))
    world.clock.advance(timedelta(minutes=5))
    world.engine_do(lambda s: note_issuer_health(s, True, world.clock.now()))
    world.step()
    assert len(world.subjects()) == 2


def test_untracked_key_warned_once(world: AlertWorld) -> None:
    world.add_key("k", "u1", expires_at=None)
    world.run(until=START + 3 * D, every=timedelta(hours=12))
    assert world.subjects() == ["[keyd WARNING] key k of user u1 has no expiry date: not tracked"]


def test_canary_no_key_material_in_mail_or_db(world: AlertWorld, tmp_path: object) -> None:
    made = make_key_file(user_id="u1", key_id="k1", expires_at=EXPIRY)
    pem = made.data["key"]
    jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJ1MSJ9.c2lnbmF0dXJlLXNpZw"
    world.add_key("k1", "u1", status="rejected", last_error=f"issuer echoed assertion={jwt} and {pem}")
    world.clock.set(EXPIRY - 2 * D)
    world.step()
    assert len(world.inbox()) == 2
    engine = make_engine(world.url)
    try:
        dump = "\n".join(
            line for line in dump_all(engine).splitlines() if not line.startswith("keys:")
        )  # the planted row itself
    finally:
        engine.dispose()
    raws = [r.raw.decode() for r in world.inbox()]
    for text in [dump, *raws]:
        assert "PRIVATE KEY" not in text and "eyJ" not in text
        assert pem.splitlines()[1] not in text


@pytest.mark.postgres
@pytest.mark.slow
def test_two_daemons_racing_on_postgres(tmp_path: object, smtp_server: SmtpServer) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with postgres_database() as url:
        upgrade(url)
        world = AlertWorld(url, smtp_server, make_config(smtp_server))
        for n in range(6):
            world.add_key(f"k{n}", f"u{n}", expires_at=EXPIRY + n * timedelta(hours=5))
        config = world.config
        email = config.alerts.email
        assert email is not None

        def daemon(barrier: threading.Barrier, errors: list[BaseException]) -> None:
            engine = make_engine(url)
            try:
                barrier.wait()
                with transaction(engine) as session:
                    evaluate_alerts(session, config, world.clock.now())
                drain_outbox(
                    engine, config, world.clock, lambda: SmtpClient(email), None, render=render_message
                )
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)
            finally:
                engine.dispose()

        while world.clock.now() < EXPIRY + 2 * D:
            errors: list[BaseException] = []
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=daemon, args=(barrier, errors)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            world.clock.advance(timedelta(hours=8))
        counts = Counter(str(r.message["Message-ID"]) for r in world.inbox())
        assert set(counts.values()) == {1}
        assert len(counts) == len(world.alerts())
        assert len(counts) >= 6 * 3


def test_missing_key_stops_its_ladder_and_stale_mail(world: AlertWorld) -> None:
    world.clock.set(EXPIRY - 5 * D)
    world.add_key("k", "u1")
    world.server.stop()
    world.step()  # 7d rung decided, not deliverable
    world.update_key("k", status="missing")
    world.server.start()
    world.run(until=EXPIRY + D, every=timedelta(hours=6))
    assert world.subjects() == []
    assert [d.state for d in world.deliveries()] == ["superseded"]
    assert all(a.resolved_at is not None for a in world.alerts())


def test_rotation_after_the_old_key_was_deleted_in_zitadel(world: AlertWorld) -> None:
    """The usual order: new key made, old key deleted in the console (the
    probe now sees it rejected), new file deployed: the rejection alert, then
    one rotated notice that closes it; no further ladder for the old key."""
    world.clock.set(EXPIRY - 20 * D)
    world.add_key("old", "u1", status="rejected")
    world.step()
    world.add_key("new", "u1", expires_at=EXPIRY + 365 * D)
    world.run(until=EXPIRY + D, every=timedelta(hours=12))
    assert world.subjects() == [
        "[keyd INFO] key old of user u1 expires in 20 days",
        "[keyd CRITICAL] key old of user u1 is rejected by the issuer",
        "[keyd INFO] key old of user u1 was replaced by key new",
    ]
    assert all(a.resolved_at is not None for a in world.alerts() if a.kind != "rotated")
