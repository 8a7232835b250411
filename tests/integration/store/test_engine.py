"""Engine settings and schema behaviour on both backends: UTC round-trips,
unique constraints, foreign keys, per-stage transactions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError

from keyd.errors import StoreError
from keyd.exposure import Exposure, exposure_text
from keyd.store import engine as engine_module
from keyd.store.engine import make_engine, session_factory, session_scope
from keyd.store.models import Alert, Key, KeyLocation, Probe, State
from tests.support.db import checked_engine, postgres_database

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
NEVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # docs/zitadel.md §1 sentinel


def a_key(key_id: str = "k1", expires_at: datetime | None = NEVER) -> Key:
    return Key(
        key_id=key_id,
        kind="serviceaccount",
        principal="u1",
        algorithm="RS256",
        fingerprint="f" * 64,
        expires_at=expires_at,
        content_hash="c" * 64,
        status="active",
        first_seen=T0,
        last_seen=T0,
        updated_at=T0,
    )


def an_alert(threshold: str = "7d") -> Alert:
    return Alert(
        about="key:k1",
        fingerprint="f" * 64,
        kind="expiring",
        threshold=threshold,
        severity="warning",
        created_at=T0,
        message_id="<m@keyd>",
        subject="s",
        context="{}",
    )


def test_datetimes_round_trip_as_aware_utc(migrated_engine: Engine) -> None:
    zurich_winter = timezone(timedelta(hours=1))
    local = datetime(2026, 12, 31, 23, 30, tzinfo=zurich_winter)
    with session_scope(migrated_engine) as session:
        session.add(a_key("never", NEVER))
        session.add(a_key("local", local))
        session.add(State(name="x", value="y", updated_at=local))

    with session_scope(migrated_engine) as session:
        got = {k.key_id: k.expires_at for k in session.scalars(select(Key))}
        state = session.get(State, "x")
    assert got["never"] == NEVER and got["never"].tzinfo is UTC
    assert got["local"] == local and got["local"].tzinfo is UTC
    assert got["local"].hour == 22  # stored as the UTC instant, not the wall time
    assert state is not None and state.updated_at == local and state.updated_at.tzinfo is UTC


def test_naive_datetimes_are_refused(migrated_engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive datetime"):  # noqa: PT012
        with session_scope(migrated_engine) as session:
            session.add(State(name="x", value="y", updated_at=datetime(2026, 1, 1)))
    with session_scope(migrated_engine) as session:
        assert session.get(State, "x") is None


def test_ordering_by_time_is_chronological(migrated_engine: Engine) -> None:
    """Due-time queries compare instants: 9999 sorts last, offsets don't matter."""
    plus14 = timezone(timedelta(hours=14))
    with session_scope(migrated_engine) as session:
        session.add(a_key("late", NEVER))
        session.add(a_key("early", T0.astimezone(plus14)))
        session.add(a_key("mid", T0 + timedelta(hours=1)))
    with session_scope(migrated_engine) as session:
        order = session.scalars(select(Key.key_id).order_by(Key.expires_at)).all()
        due = session.scalars(select(Key.key_id).where(Key.expires_at <= T0)).all()
    assert order == ["early", "mid", "late"]
    assert due == ["early"]


def test_alert_is_unique_per_about_kind_threshold(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        session.add(an_alert("7d"))
    with session_scope(migrated_engine) as session:
        session.add(an_alert("3d"))  # another threshold: fine
    with pytest.raises(IntegrityError):  # noqa: PT012
        with session_scope(migrated_engine) as session:
            session.add(an_alert("7d"))
    with session_scope(migrated_engine) as session:
        assert len(session.scalars(select(Alert)).all()) == 2


def test_foreign_keys_are_enforced(migrated_engine: Engine) -> None:
    with pytest.raises(IntegrityError):  # noqa: PT012
        with session_scope(migrated_engine) as session:
            session.add(Probe(key_pk=12345, at=T0, outcome="ok"))


def test_deleting_a_key_cascades_and_nulls(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        key = a_key()
        session.add(key)
        session.flush()
        session.add(Probe(key_pk=key.id, at=T0, outcome="ok"))
        alert = an_alert()
        alert.key_pk = key.id
        session.add(alert)
    with session_scope(migrated_engine) as session:
        session.execute(text("DELETE FROM keys"))
    with session_scope(migrated_engine) as session:
        assert session.scalars(select(Probe)).all() == []
        assert [a.key_pk for a in session.scalars(select(Alert))] == [None]


def test_session_scope_rolls_back_on_error(migrated_engine: Engine) -> None:
    with pytest.raises(KeyError):  # noqa: PT012
        with session_scope(migrated_engine) as session:
            session.add(State(name="x", value="y", updated_at=T0))
            session.flush()
            raise KeyError("stage failed")
    factory = session_factory(migrated_engine)
    with session_scope(factory) as session:
        assert session.get(State, "x") is None
        session.add(State(name="x", value="y", updated_at=T0))
    with factory() as session:
        state = session.get(State, "x")
        assert state is not None
        session.commit()
        assert state.value == "y"  # expire_on_commit=False: no reload needed


def test_sqlite_pragmas(tmp_path) -> None:
    with checked_engine(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'keyd.db'}") as engine:
        with engine.connect() as connection:

            def pragma(name: str) -> object:
                return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 5000
            assert pragma("synchronous") == 1  # NORMAL
    assert (tmp_path / "deep" / "dir" / "keyd.db").exists()


def test_sqlite_lock_timeout_is_a_store_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 100)
    url = f"sqlite:///{tmp_path / 'keyd.db'}"
    with checked_engine(url) as first, checked_engine(url) as second:
        with first.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
        with first.connect() as holder:
            holder.exec_driver_sql("COMMIT")  # leave SQLAlchemy's BEGIN
            holder.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                with pytest.raises(StoreError, match="locked by another process") as caught:  # noqa: PT012
                    with second.begin() as connection:
                        connection.execute(text("INSERT INTO t VALUES (1)"))
            finally:
                holder.exec_driver_sql("ROLLBACK")
                holder.exec_driver_sql("BEGIN")
    assert caught.value.retryable


@pytest.mark.postgres
def test_postgres_sessions_are_utc_whatever_the_server_says() -> None:
    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        with checked_engine(url) as engine:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"ALTER DATABASE {name} SET timezone TO 'America/New_York'")
        with checked_engine(url) as engine, engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW timezone").scalar() == "UTC"
            noon = connection.exec_driver_sql("SELECT '2026-06-01 12:00:00+00'::timestamptz::text").scalar()
            assert noon == "2026-06-01 12:00:00+00"


@pytest.mark.postgres
def test_postgres_bare_scheme_uses_psycopg3() -> None:
    with postgres_database() as url:
        bare = url.replace("postgresql+psycopg://", "postgresql://")
        engine = make_engine(bare)
        try:
            assert engine.url.drivername == "postgresql+psycopg"
            with engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        finally:
            engine.dispose()


def test_permission_warnings_round_trip_as_records(migrated_engine: Engine) -> None:
    """A path holding "; " or " is " stays whole: warnings are stored as a
    list, never as text to split again. None stores NULL and reads ()."""
    warnings = (
        Exposure("/keys/a; b is.json", "readable by other users (mode 0644, chmod o-r it)"),
        Exposure("/keys", "readable by group adm (gid 4), which is not keyd's own group", directory=True),
    )
    at = datetime(2026, 5, 1, tzinfo=UTC)
    with session_scope(migrated_engine) as session:
        for ref, held in (("/keys/a", warnings), ("/keys/b", ())):
            session.add(
                KeyLocation(
                    source="dir", ref=ref, status="present", warning=held, first_seen=at, last_seen=at
                )
            )
    with session_scope(migrated_engine) as session:
        got = {loc.ref: loc.warning for loc in session.scalars(select(KeyLocation))}
        raw = {r.ref: r.warning for r in session.execute(text("SELECT ref, warning FROM key_locations"))}
    assert got == {"/keys/a": warnings, "/keys/b": ()}
    assert raw["/keys/b"] is None


def test_permission_warnings_an_older_keyd_joined_are_read_as_records(migrated_engine: Engine) -> None:
    legacy = (
        "key file /keys/a.json is readable by other users (mode 0644, chmod o-r it); "
        "its directory /keys is readable by other users (mode 0755, chmod o-r it)"
    )
    at = datetime(2026, 5, 1, tzinfo=UTC)
    with session_scope(migrated_engine) as session:
        session.add(
            KeyLocation(source="dir", ref="/keys/a.json", status="present", first_seen=at, last_seen=at)
        )
    with session_scope(migrated_engine) as session:
        session.execute(text("UPDATE key_locations SET warning = :w"), {"w": legacy})
    with session_scope(migrated_engine) as session:
        (loc,) = session.scalars(select(KeyLocation))
        assert loc.warning == (
            Exposure("/keys/a.json", "readable by other users (mode 0644, chmod o-r it)"),
            Exposure("/keys", "readable by other users (mode 0755, chmod o-r it)", directory=True),
        )
        assert exposure_text(loc.warning) == legacy
