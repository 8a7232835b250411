"""The probe through real parts: the test authorization server (Authlib's
RFC 7523 verifier with fault injection) and SQLite/PostgreSQL."""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyd.actions.probe import ProbeServices, probe_due
from keyd.checks.assertion import AssertionSigner
from keyd.checks.keyload import make_key_loader
from keyd.checks.probe import ProbePolicy
from keyd.clients.issuer import IssuerClient
from keyd.clock import FakeClock
from keyd.config import DirectorySourceConfig
from keyd.sources.keyfile import read_keyfile
from keyd.store.alerts import issuer_outage, note_issuer_health
from keyd.store.models import Probe
from tests.support.issuer import IssuerServer
from tests.support.keyrows import add_key, dump_all, key_row, rows
from tests.support.keys import make_key_file

pytestmark = pytest.mark.issuer


@dataclass
class World:
    engine: Any
    issuer: IssuerServer
    clock: FakeClock
    services: ProbeServices
    keydir: Path

    def add(self, register: bool = True, **kw: Any) -> Any:
        kw.setdefault("expires_at", self.clock.now() + timedelta(days=90))
        made = make_key_file(self.keydir, register_with=self.issuer if register else None, **kw)
        add_key(self.engine, read_keyfile(made.path), ref=str(made.path), now=self.clock.now())
        return made

    def run(self, **kw: Any) -> Any:
        return probe_due(self.engine, self.services, self.clock.now(), **kw)


def _world(
    engine: Any,
    issuer: IssuerServer,
    tmp_path: Path,
    url: str | None = None,
    timeout: float = 2.0,
    **policy: Any,
) -> Iterator[World]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    issuer.now = clock.now
    client = IssuerClient(url or issuer.url, clock=clock, timeout=timeout)
    keydir = tmp_path / "keys"
    policy.setdefault("rate_limit", 0)
    services = ProbeServices(
        client=client,
        signer=AssertionSigner(clock),
        clock=clock,
        load_key=make_key_loader([DirectorySourceConfig("dir", keydir)], None, UTC),
        policy=ProbePolicy(**policy),
        rng=random.Random(5),
        on_round=note_issuer_health,
    )
    try:
        yield World(engine, issuer, clock, services, keydir)
    finally:
        client.close()


@pytest.fixture
def world(migrated_engine, issuer, tmp_path) -> Iterator[World]:
    yield from _world(migrated_engine, issuer, tmp_path)


def outcome_of(world: World, key_id: str) -> tuple[str | None, str | None]:
    key = key_row(world.engine, key_id)
    return key.last_probe_outcome, key.status


def test_ok_service_user_and_application(world):
    user = world.add()
    app = world.add(kind="application")
    report = world.run()
    assert report.counts() == {"ok": 2}
    assert outcome_of(world, user.key_id) == ("ok", "active")
    assert outcome_of(world, app.key_id) == ("ok", "active")
    assert world.issuer.requests_by_path["/oauth/v2/introspect"] == 1


def test_a_jti_strict_server_accepts_application_keys(world):
    """A standards-strict server (jti required, never reused) would call an
    application key without jti invalid_client: keyd would say revoked."""
    world.issuer.strict_jti = True
    app = world.add(kind="application")
    assert world.run().counts() == {"ok": 1}
    assert world.run(force_key_id=app.key_id).counts() == {"ok": 1}  # a new assertion
    assert len(world.issuer.seen_jti) == 2 and not world.issuer.rejections


@pytest.mark.parametrize("style,status", [("400", 400), ("500", 500)])
def test_unknown_key_is_rejected_in_both_styles(world, style, status):
    world.issuer.reject_style = style
    made = world.add(register=False)
    [result] = world.run().results
    assert result.outcome == "rejected" and result.http_status == status
    assert result.diagnosis == "revoked_or_unknown"
    assert outcome_of(world, made.key_id) == ("rejected", "rejected")


def test_expired_key_diagnosed_by_file_date(world):
    made = world.add(expires_at=world.clock.now() - timedelta(days=1))
    [result] = world.run().results
    assert result.outcome == "rejected" and result.diagnosis == "expired"
    assert made.key_id in (result.message or "")


@pytest.mark.parametrize(
    "mode,outcome",
    [
        ("503", "unavailable"),
        ("502", "unavailable"),
        ("504", "unavailable"),
        ("close", "unavailable"),
        ("garbage", "bad_response"),
        ("no_token", "bad_response"),
        ("oversized", "bad_response"),
        # odd token answers: a probe row each, never a failed stage, never a written token
        ("gzip_junk", "bad_response"),
        ("huge_expiry", "bad_response"),
        ("crlf_token", "bad_response"),
    ],
)
def test_faults_are_never_blamed_on_the_key(world, mode, outcome):
    made = world.add()
    world.issuer.fail_mode = mode
    [result] = world.run().results
    assert result.outcome == outcome and result.attempts == 3
    key = key_row(world.engine, made.key_id)
    assert key.status == "active" and key.probe_failures == 1 and key.last_ok_at is None
    assert key.next_probe_at < world.clock.now() + timedelta(hours=1)
    world.issuer.fail_mode = None
    world.clock.set(key.next_probe_at)
    assert world.run().counts() == {"ok": 1}
    assert key_row(world.engine, made.key_id).probe_failures == 0


def test_transient_fault_recovers_inside_the_round(world):
    world.add()
    world.issuer.fail_next(2, "503")
    [result] = world.run().results
    assert result.outcome == "ok" and result.attempts == 3


def test_connection_refused_marks_issuer_unavailable(migrated_engine, issuer, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for world in _world(migrated_engine, issuer, tmp_path, url=dead):
        world.add()
        [result] = world.run().results
        assert result.outcome == "unavailable"
        from sqlalchemy.orm import Session

        with Session(world.engine) as session:
            assert issuer_outage(session) is not None


def test_hang_times_out_fast_and_does_not_stall_others(migrated_engine, issuer, tmp_path):
    for world in _world(migrated_engine, issuer, tmp_path, timeout=0.5, fast_attempts=1, concurrency=4):
        made = [world.add() for _ in range(6)]
        world.issuer.hang_seconds = 30
        world.issuer.fail_next(1, "hang")
        started = time.monotonic()
        report = world.run()
        elapsed = time.monotonic() - started
        assert report.counts() == {"ok": 5, "unavailable": 1}
        assert elapsed < 5
        assert len(rows(world.engine, Probe)) == len(made)


def test_rejection_is_final_until_forced(world):
    made = world.add(register=False)
    world.run()
    world.clock.advance(timedelta(days=3))
    assert world.run().results == []
    world.issuer.add_key(made.principal, made.key_id, made.private_key.public_key(), made.expires_at)
    assert world.run(force_key_id=made.key_id).counts() == {"ok": 1}
    assert outcome_of(world, made.key_id) == ("ok", "active")


def test_no_secret_in_logs_or_db(world, caplog):
    caplog.set_level(logging.DEBUG)
    world.add()
    world.add(register=False)
    world.add(kind="application")
    world.issuer.fail_next(1, "503")
    world.run()
    text = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith(("authlib", "tests."))
    ) + dump_all(world.engine)
    assert world.issuer.issued_tokens
    for marker in ["zat_", "eyJ", "PRIVATE KEY", *world.issuer.issued_tokens]:
        assert marker not in text


def test_a_round_in_chunks_with_batched_writes(world):
    """The daemon probes in chunks (``limit``, ``more``); each flush is one
    multi-row INSERT and one executemany UPDATE per shape, not a statement
    per probe (measured before: 0.53 ms/probe in record_probe_results, 21x a
    batched Core write)."""
    from sqlalchemy import event

    for i in range(9):
        world.add(key_id=f"90{i}", alg="ES256")
    statements: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        statements.append(" ".join(statement.split()[:3]).upper())

    event.listen(world.engine, "before_cursor_execute", record)
    try:
        first = world.run(limit=5)
        assert len(first.results) == 5 and first.more
        second = world.run(limit=5)
        assert len(second.results) == 4 and not second.more
    finally:
        event.remove(world.engine, "before_cursor_execute", record)
    assert world.run(limit=5).results == []  # all scheduled ahead now
    # per flush (one per chunk here): one INSERT into probes, one UPDATE of keys
    assert statements.count("INSERT INTO PROBES") == 2
    assert statements.count("UPDATE KEYS SET") == 2
    assert len(rows(world.engine, Probe)) == 9


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_round_reuses_its_connections(migrated_engine, issuer, tmp_path, monkeypatch, concurrency):
    """Keep-alive: a round of N keys opens at most one HTTP connection per
    place in flight, plus the one discovery went over (the blocking
    client's; the round's requests go through the multiplexer's own), not
    one per probe."""
    opened: list[socket.socket] = []
    track = issuer.track

    def counting(conn: socket.socket, alive: bool) -> None:
        if alive:
            opened.append(conn)
        track(conn, alive)

    monkeypatch.setattr(issuer, "track", counting)
    for world in _world(migrated_engine, issuer, tmp_path, concurrency=concurrency):
        for i in range(12):
            world.add(key_id=f"70{i}", alg="ES256", kind="application" if i % 4 == 0 else "serviceaccount")
        assert world.run().counts() == {"ok": 12}
        assert world.issuer.requests_seen >= 13  # discovery and one request per key
    assert 1 <= len(opened) <= concurrency + 1
