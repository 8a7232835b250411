"""A warm scan of an unchanged tree writes nothing, on SQLite and
PostgreSQL. Measured before: every scan rewrote ``last_seen`` on every
location and key row (75 MB written per scan at 50,000 keys on SQLite,
~80 MB of WAL and 100k dead rows on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from keyd.clock import FakeClock
from keyd.config import Config, DirectorySourceConfig
from keyd.inventory.reconcile import SOURCE_HEARTBEAT
from keyd.inventory.scan import scan_all
from keyd.store.inventory import inventory_snapshot
from keyd.store.models import Key, KeyLocation
from tests.support.keys import make_key_file
from tests.support.sql import statements

START = datetime(2026, 6, 1, tzinfo=UTC)
WRITES = ("INSERT", "UPDATE", "DELETE")


@contextmanager
def _writes(engine: Engine) -> Iterator[list[str]]:
    with statements(engine) as seen:
        writes: list[str] = []
        yield writes
    writes.extend(s for s in seen if s.lstrip().upper().startswith(WRITES))


def test_a_warm_scan_issues_no_write(tmp_path: Path, migrated_engine: Engine) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for i in range(12):
        make_key_file(
            keys / f"team{i % 3}",
            key_id=f"40{i}",
            user_id=f"svc-{i}",
            alg="ES256",
            expires_at=START + timedelta(days=90 + i),
        )
    (keys / "broken.json").write_text("{not json")
    config = Config(sources=(DirectorySourceConfig(name="dir", path=keys),))
    clock = FakeClock(START)
    assert scan_all(config, migrated_engine, clock).total("new") == 12  # cold

    clock.advance(timedelta(minutes=5))
    with _writes(migrated_engine) as writes:
        report = scan_all(config, migrated_engine, clock)
    assert report.total("seen") == 13 and report.total("unchanged") == 12
    # the invalid file is re-read each scan but unchanged: no write for it either
    assert writes == []

    clock.advance(SOURCE_HEARTBEAT)  # the per-source heartbeat: one row, not one per key
    with _writes(migrated_engine) as writes:
        scan_all(config, migrated_engine, clock)
    assert len(writes) == 1 and "source_states" in writes[0]
    snapshot = inventory_snapshot(migrated_engine)
    assert {loc.last_seen for k in snapshot.keys for loc in k.locations} == {clock.now()}
    assert {k.last_seen for k in snapshot.keys} == {clock.now()}

    (keys / "team0" / "400.json").unlink()  # a change: written, in one transaction
    clock.advance(timedelta(minutes=5))
    with _writes(migrated_engine) as writes:
        scan_all(config, migrated_engine, clock)
    assert writes and not any(" key_locations SET last_seen" in w for w in writes)
    with Session(migrated_engine) as session:
        assert session.scalar(select(Key.status).where(Key.key_id == "400")) == "missing"


def test_a_key_expiring_between_warm_scans_still_turns_expired(
    tmp_path: Path, migrated_engine: Engine
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    make_key_file(keys, key_id="501", user_id="svc", alg="ES256", expires_at=START + timedelta(hours=1))
    config = Config(sources=(DirectorySourceConfig(name="dir", path=keys),))
    clock = FakeClock(START)
    scan_all(config, migrated_engine, clock)
    clock.advance(timedelta(hours=2))
    scan_all(config, migrated_engine, clock)
    with Session(migrated_engine) as session:
        assert session.scalar(select(Key.status).where(Key.key_id == "501")) == "expired"


def _warm_selects(tmp_path: Path, engine: Engine, n: int) -> list[str]:
    """The SELECTs of a warm scan of ``n`` unchanged files (one of them
    group-readable by another group, one broken: the paths that are not
    the plain fast one)."""
    keys = tmp_path / f"keys{n}"
    keys.mkdir(mode=0o700)
    for team in range(7):
        (keys / f"team{team}").mkdir(mode=0o700)
    for i in range(n):
        make_key_file(keys / f"team{i % 7}", key_id=f"{n}-{i}", user_id=f"svc-{i}", alg="ES256")
    (keys / "team0" / f"{n}-0.json").chmod(0o604)
    (keys / "broken.json").write_text("{not json")
    (keys / "broken.json").chmod(0o600)
    config = Config(sources=(DirectorySourceConfig(name=f"dir{n}", path=keys),))
    clock = FakeClock(START)
    scan_all(config, engine, clock)
    clock.advance(timedelta(minutes=5))
    with statements(engine) as seen:
        report = scan_all(config, engine, clock)
    assert report.total("unchanged") == n and report.total("warnings") == 1
    assert not [s for s in seen if s.lstrip().upper().startswith(WRITES)]
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


def test_a_warm_scan_issues_the_same_selects_for_10_or_200_files(
    tmp_path: Path, migrated_engine: Engine
) -> None:
    """Bounded, independent of N, and exactly these: the source's index in
    one narrow query without the warnings' text (that only for the rows
    that have one, and the refs of the invalid locations, from their
    partial index), the broken file's row (re-read each scan), the keys
    whose status may move (index ranges: the ones an expiry can move, and
    the missing/invalid/unheld ones only where this source holds them),
    the source's state and the key counts: no query per file or per batch."""
    few = _warm_selects(tmp_path, migrated_engine, 10)
    many = _warm_selects(tmp_path, migrated_engine, 200)
    assert len(few) == len(many) == 7
    assert sum(s.startswith("SELECT key_locations.") for s in many) == 4
    index, warned, other, _broken, unsettled = many[:5]
    assert "key_locations.warning" not in index and "warning IS NOT NULL" in warned
    assert "key_locations.warning" not in other and "key_locations.status = 'invalid'" in other
    assert unsettled.startswith("SELECT keys.") and unsettled.count("UNION ALL") == 3
    assert "EXISTS (SELECT key_locations.id" in unsettled


def test_a_chmod_between_warm_scans_raises_and_clears_the_warning(
    tmp_path: Path, migrated_engine: Engine
) -> None:
    """A chmod changes no stamp: the fast paths still compare the
    warnings, and only the location whose warning moved is written."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for i in range(5):
        make_key_file(keys, key_id=f"60{i}", user_id=f"svc-{i}", alg="ES256", filename=f"{i}.json")
    config = Config(sources=(DirectorySourceConfig(name="dir", path=keys),))
    clock = FakeClock(START)
    scan_all(config, migrated_engine, clock)
    path = keys / "2.json"

    def stored() -> list[object]:
        with Session(migrated_engine) as session:
            return [w for (w,) in session.execute(select(KeyLocation.warning).order_by(KeyLocation.ref))]

    for mode, warnings in ((0o604, 1), (0o600, 0)):
        path.chmod(mode)
        clock.advance(timedelta(minutes=5))
        with _writes(migrated_engine) as writes:
            report = scan_all(config, migrated_engine, clock)
        assert report.total("unchanged") == 5 and report.total("warnings") == warnings
        assert len([w for w in writes if w.startswith("UPDATE key_locations")]) == 1
        assert [bool(w) for w in stored()] == [False, False, bool(warnings), False, False]
        with _writes(migrated_engine) as writes:  # and the next scan is quiet again
            assert scan_all(config, migrated_engine, clock).total("warnings") == warnings
        assert writes == []
