"""PostgreSQL leadership: one leader among three; a standby takes over
within seconds when the leader's connection is killed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from keyd.inventory.leader import AdvisoryLeaderGuard, make_guard

pytestmark = pytest.mark.postgres

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"keyd_leader_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _advisory_holders(url: str) -> list[int]:
    """Backend pids granted an advisory lock in ``url``'s database, as the server sees them."""
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s",
            (url.rsplit("/", 1)[1],),
        ).fetchall()
    return [int(r[0]) for r in rows]


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_one_leader_among_three_and_fast_takeover(pg_url: str) -> None:
    guards = [make_guard(pg_url) for _ in range(3)]
    try:
        assert all(isinstance(g, AdvisoryLeaderGuard) and g.standby_possible for g in guards)
        won = [g.acquire() for g in guards]
        assert won == [True, False, False]
        assert [g.is_leader() for g in guards] == [True, False, False]

        leader = guards[0]
        pid = leader._lock.backend_pid()  # type: ignore[attr-defined]
        assert pid is not None
        assert _advisory_holders(pg_url) == [pid]  # the one lock, held by the leader's connection
        _terminate(pg_url, pid)  # the leader's connection drops

        assert leader.is_leader() is False  # noticed on its next tick
        # standbys retry every few seconds; the first retry already wins
        assert [g.acquire() for g in guards[1:]] == [True, False]
        # the old leader now finds the lock taken and becomes a standby
        assert leader.acquire() is False
        assert guards[1].is_leader() and not guards[2].is_leader()
    finally:
        for g in guards:
            g.close()


def test_close_releases_for_the_next(pg_url: str) -> None:
    first, second = make_guard(pg_url), make_guard(pg_url)
    try:
        assert first.acquire() and not second.acquire()
        first.close()
        assert second.acquire()
        assert "***" not in second.describe() and "postgres@" in second.describe()
    finally:
        first.close()
        second.close()


def test_unreachable_database_means_standby_not_crash() -> None:
    guard = make_guard("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        assert guard.acquire() is False
        assert guard.is_leader() is False
    finally:
        guard.close()


def test_plain_postgresql_url_means_psycopg(pg_url: str) -> None:
    guard = make_guard(pg_url.replace("postgresql+psycopg://", "postgres://"))
    try:
        assert guard.acquire()
    finally:
        guard.close()
