"""Exactly once per (about, kind, threshold, expires_at) on both backends,
rows without an expiry instant (NULL) included: SQL unique constraints
treat NULLs as distinct, so ``alerts`` has two partial unique indexes
(models.Alert). Checked with plain INSERTs (the database refuses) and with
two writers racing through ``insert_alert`` (one row, one winner)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from keyd.store import alerts as store
from keyd.store.engine import session_scope
from keyd.store.models import Alert

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
EXPIRY = datetime(2027, 1, 1, tzinfo=UTC)
CASES = [
    pytest.param("expiring", "7d", EXPIRY, id="rung"),
    pytest.param("rejected", "never-ok", None, id="no-instant"),
]


def an_alert(kind: str, threshold: str, expires_at: datetime | None) -> Alert:
    return Alert(
        about="key:k1",
        kind=kind,
        threshold=threshold,
        expires_at=expires_at,
        severity="warning",
        created_at=T0,
        message_id="<m@keyd>",
        subject="s",
        context="{}",
    )


def count(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Alert)) or 0)


@pytest.mark.parametrize(("kind", "threshold", "expires_at"), CASES)
def test_database_refuses_a_second_row(
    migrated_engine: Engine, kind: str, threshold: str, expires_at: datetime | None
) -> None:
    with session_scope(migrated_engine) as session:
        session.add(an_alert(kind, threshold, expires_at))
    with pytest.raises(IntegrityError):  # noqa: PT012
        with session_scope(migrated_engine) as session:
            session.add(an_alert(kind, threshold, expires_at))
    assert count(migrated_engine) == 1


def test_label_repeats_for_another_expiry_or_without_one(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        session.add(an_alert("expiring", "7d", EXPIRY))
        session.add(an_alert("expiring", "7d", datetime(2027, 6, 1, tzinfo=UTC)))  # a new ladder
        session.add(an_alert("expiring", "7d", None))  # a pre-0002 row that was no rung name
    assert count(migrated_engine) == 3


@pytest.mark.parametrize(("kind", "threshold", "expires_at"), CASES)
def test_racing_writers_insert_one_row(
    migrated_engine: Engine, kind: str, threshold: str, expires_at: datetime | None
) -> None:
    """Two transactions decide the same alert at once (two daemons on one
    database): one inserts it, the other gets None and no error."""
    start = threading.Barrier(2)
    results: list[object] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with store.transaction(migrated_engine) as session:
                start.wait()
                alert = store.insert_alert(
                    session,
                    about="key:k1",
                    key_pk=None,
                    kind=kind,
                    threshold=threshold,
                    expires_at=expires_at,
                    severity="warning",
                    created_at=T0,
                    message_id="<m@keyd>",
                    subject="s",
                    context={},
                )
                results.append(None if alert is None else alert.id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 2 and results.count(None) == 1  # one winner, one no-op
    assert count(migrated_engine) == 1
