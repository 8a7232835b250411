"""The daemon's watched directory sources (``keyd.inventory.watched``):
real inotify on real files, on SQLite and PostgreSQL. Each test asserts
the shape of a tick's work: which scope it took, the directories it
listed (``os.scandir`` calls), the statements it issued."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from inotify_simple import INotify
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from keyd.clock import FakeClock
from keyd.config import Config, DirectorySourceConfig
from keyd.inventory.reconcile import SOURCE_HEARTBEAT
from keyd.inventory.scan import ScanReport, scan_all
from keyd.inventory.watched import WatchedScans
from keyd.sources.watch import IN_Q_OVERFLOW
from keyd.store.models import Key, KeyLocation, SourceState
from tests.support.keys import make_key_file
from tests.support.sql import statements

START = datetime(2026, 6, 1, tzinfo=UTC)
TICK = timedelta(minutes=5)
WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclass
class World:
    root: Path
    engine: Engine
    config: Config
    watches: WatchedScans
    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    listed: list[str] = field(default_factory=list)  # directories os.scandir listed

    def tick(self) -> ScanReport:
        self.listed.clear()
        self.clock.advance(TICK)
        return scan_all(self.config, self.engine, self.clock, due_only=True, watches=self.watches)

    def outcome(self, report: ScanReport) -> Any:
        (outcome,) = report.sources
        return outcome

    def location(self, path: Path) -> str | None:
        with Session(self.engine) as session:
            return session.scalar(select(KeyLocation.status).where(KeyLocation.ref == str(path)))

    def warning(self, path: Path) -> object:
        with Session(self.engine) as session:
            return session.scalar(select(KeyLocation.warning).where(KeyLocation.ref == str(path)))


@pytest.fixture
def world(tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from _world(tmp_path, migrated_engine, monkeypatch)


def _world(
    tmp_path: Path,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    *,
    watch: bool = True,
    factory: Any = None,
    links: bool = False,
) -> Iterator[World]:
    root = tmp_path / "keys"
    for team in ("team0", "team1"):
        (root / team).mkdir(parents=True)
        for i in range(2):
            make_key_file(root / team, key_id=f"{team}-{i}", alg="ES256")
    for directory in (root, root / "team0", root / "team1"):
        directory.chmod(0o700)
    if links:
        (root / "link.json").symlink_to(root / "team0" / "team0-0.json")
    config = Config(sources=(DirectorySourceConfig(name="dir", path=root, watch=watch),))
    watches = WatchedScans(timedelta(hours=1), factory=factory)
    world = World(root, engine, config, watches)
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        world.listed.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    first = world.tick()
    assert world.outcome(first).reason == ("first scan" if watch else "watch = false")
    assert first.total("new") == 4
    try:
        yield world
    finally:
        watches.close()


@contextmanager
def _sql(engine: Engine) -> Iterator[list[str]]:
    with statements(engine) as seen:
        yield seen


def test_a_tick_with_no_events_walks_nothing_and_writes_nothing(world: World) -> None:
    with _sql(world.engine) as seen:
        report = world.tick()
    outcome = world.outcome(report)
    assert outcome.scope == "watched" and outcome.reason is None and outcome.ok
    assert world.listed == []  # no walk
    assert not [s for s in seen if s.lstrip().upper().startswith(WRITES)]
    assert not [s for s in seen if "key_locations" in s]  # no source-index read, no reconcile
    assert "1 watched (no change), 0 partial, 0 full" in report.summary()

    world.clock.advance(SOURCE_HEARTBEAT)  # still checked: the heartbeat row, nothing else
    with _sql(world.engine) as seen:
        world.tick()
    writes = [s for s in seen if s.lstrip().upper().startswith(WRITES)]
    assert len(writes) == 1 and "source_states" in writes[0]
    with Session(world.engine) as session:
        state = session.get(SourceState, "dir")
        assert state is not None and state.last_success_at == world.clock.now()


def test_a_new_file_is_picked_up_by_a_partial_scan(world: World) -> None:
    make_key_file(world.root / "team1", key_id="team1-new", alg="ES256")
    report = world.tick()
    outcome = world.outcome(report)
    assert (outcome.scope, outcome.directories, outcome.new) == ("partial", 1, 1)
    assert world.listed == [str(world.root / "team1")]
    assert world.location(world.root / "team1" / "team1-new.json") == "present"
    assert world.outcome(world.tick()).scope == "watched"  # and then quiet again


def test_a_deleted_file_goes_missing_and_other_directories_stay(world: World) -> None:
    (world.root / "team0" / "team0-1.json").unlink()
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.missing) == ("partial", 1)
    assert world.listed == [str(world.root / "team0")]
    assert world.location(world.root / "team0" / "team0-1.json") == "missing"
    assert world.location(world.root / "team0" / "team0-0.json") == "present"
    for i in range(2):  # never looked at, never touched
        assert world.location(world.root / "team1" / f"team1-{i}.json") == "present"
    with Session(world.engine) as session:
        assert session.scalar(select(Key.status).where(Key.key_id == "team0-1")) == "missing"
        assert session.scalar(select(Key.status).where(Key.key_id == "team1-0")) == "active"


def test_content_rewritten_in_place(world: World) -> None:
    path = world.root / "team0" / "team0-0.json"
    make_key_file(world.root / "team0", key_id="team0-0", alg="ES256", filename="team0-0.json")  # new key
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.changed) == ("partial", 1)
    assert world.location(path) == "present"


def test_chmod_raises_and_clears_the_exposure_warning(world: World) -> None:
    path = world.root / "team1" / "team1-0.json"
    path.chmod(0o644)
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.warnings) == ("partial", 1)
    assert "other users" in str(world.warning(path))
    path.chmod(0o600)
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.warnings) == ("partial", 0)
    assert not world.warning(path)


def test_a_new_subdirectory_means_a_full_scan_with_rebuilt_watches(world: World) -> None:
    make_key_file(world.root / "team2", key_id="team2-0", alg="ES256")
    outcome = world.outcome(world.tick())
    assert outcome.scope == "full" and "created" in (outcome.reason or "") and outcome.new == 1
    make_key_file(world.root / "team2", key_id="team2-1", alg="ES256")  # the new one is watched
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.new, outcome.reason) == ("partial", 1, None)
    assert world.listed == [str(world.root / "team2")]


def test_a_kubernetes_style_dot_name_swap_marks_the_directory(world: World) -> None:
    (world.root / "team0" / "..data_tmp").write_text("x")
    (world.root / "team0" / "..data_tmp").rename(world.root / "team0" / "..data")
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.directories) == ("partial", 1)


def test_a_file_the_pattern_does_not_match_is_ignored(world: World) -> None:
    (world.root / "team0" / "notes.txt").write_text("not a key")
    assert world.outcome(world.tick()).scope == "watched"


def test_periodic_full_scan_and_request_full(world: World) -> None:
    world.clock.advance(timedelta(hours=1))
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.reason) == ("full", "full_scan_interval")
    assert sorted(world.listed) == sorted(
        str(p) for p in (world.root, world.root / "team0", world.root / "team1")
    )
    assert world.outcome(world.tick()).scope == "watched"
    world.watches.request_full("this replica became leader")
    assert world.outcome(world.tick()).reason == "this replica became leader"
    assert world.outcome(world.tick()).scope == "watched"


def test_a_key_expiring_while_nothing_changes_still_turns_expired(
    tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = _world(tmp_path, migrated_engine, monkeypatch)
    world = next(gen)
    make_key_file(world.root / "team1", key_id="soon", alg="ES256", expires_at=START + timedelta(hours=2))
    assert world.outcome(world.tick()).new == 1
    assert world.outcome(world.tick()).scope == "watched"
    world.clock.advance(timedelta(hours=2))  # past the expiry, and the periodic full scan: take it
    world.tick()
    with Session(world.engine) as session:
        assert session.scalar(select(Key.status).where(Key.key_id == "soon")) == "expired"
    later = START + timedelta(hours=2, minutes=40)
    make_key_file(world.root / "team0", key_id="later", alg="ES256", expires_at=later)
    world.tick()  # 2:25, partial: "later" is new
    world.clock.advance(timedelta(minutes=30))  # 3:00: "later" has expired, the next full scan is at 3:20
    report = world.tick()
    outcome = world.outcome(report)
    assert (outcome.scope, outcome.directories) == ("partial", 1)
    assert world.listed == [str(world.root / "team0")]
    with Session(world.engine) as session:
        assert session.scalar(select(Key.status).where(Key.key_id == "later")) == "expired"
    gen.close()


def test_watch_false_scans_in_full_every_tick(
    tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = _world(tmp_path, migrated_engine, monkeypatch, watch=False)
    world = next(gen)
    for _ in range(2):
        outcome = world.outcome(world.tick())
        assert outcome.scope == "full" and len(world.listed) == 3
    gen.close()


def test_symlinked_key_files_mean_full_scans(
    tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = _world(tmp_path, migrated_engine, monkeypatch, links=True)
    world = next(gen)
    for _ in range(2):
        outcome = world.outcome(world.tick())
        assert (outcome.scope, outcome.reason) == ("full", "symlinked key files")
        assert len(world.listed) == 3
    gen.close()


class _Overflowing(INotify):  # type: ignore[misc]
    """Real inotify; the next read also reports a queue overflow."""

    overflow = False

    def read(self, timeout: Any = None, read_delay: Any = None) -> list[Any]:
        events = list(super().read(timeout=timeout, read_delay=read_delay))
        if _Overflowing.overflow:
            _Overflowing.overflow = False
            events.append(type(events[0])(-1, IN_Q_OVERFLOW, 0, "") if events else _event(-1, IN_Q_OVERFLOW))
        return events


def _event(wd: int, mask: int) -> Any:
    from inotify_simple import Event

    return Event(wd, mask, 0, "")


def test_an_overflow_means_a_full_scan(
    tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = _world(tmp_path, migrated_engine, monkeypatch, factory=_Overflowing)
    world = next(gen)
    _Overflowing.overflow = True
    outcome = world.outcome(world.tick())
    assert outcome.scope == "full" and "overflow" in (outcome.reason or "")
    assert world.outcome(world.tick()).scope == "watched"
    gen.close()


class _NoSpace(INotify):  # type: ignore[misc]
    """Real inotify whose per-user watch limit is reached at once."""

    def add_watch(self, path: Any, mask: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_no_watch_left_falls_back_to_full_scans_with_one_warning(
    tmp_path: Path, migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="keyd.inventory.watched"):
        gen = _world(tmp_path, migrated_engine, monkeypatch, factory=_NoSpace)
        world = next(gen)
        for _ in range(3):
            outcome = world.outcome(world.tick())
            assert outcome.scope == "full" and "max_user_watches" in (outcome.reason or "")
            assert len(world.listed) == 3 and outcome.ok
    warnings = [r for r in caplog.records if "not watched" in r.getMessage()]
    assert len(warnings) == 1 and "max_user_watches" in warnings[0].getMessage()
    gen.close()


def test_a_failed_partial_scan_is_recorded_and_the_next_tick_is_full(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    team0 = str(world.root / "team0")
    real = os.scandir

    def refusing(path: Any = ".") -> Any:
        world.listed.append(str(path))
        if str(path) == team0:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", refusing)
    (world.root / "team0" / "team0-0.json").touch()
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.ok) == ("partial", False) and "cannot list" in (outcome.error or "")
    with Session(world.engine) as session:
        state = session.get(SourceState, "dir")
        assert state is not None and state.consecutive_failures == 1
    outcome = world.outcome(world.tick())  # still refused: the full scan fails too, keys untouched
    assert (outcome.scope, outcome.ok) == ("full", False)
    assert world.location(world.root / "team0" / "team0-1.json") == "present"
    monkeypatch.setattr(os, "scandir", real)
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.ok, outcome.reason) == ("full", True, "the last scan failed")
    assert world.outcome(world.tick()).scope == "watched"


def test_the_root_removed_means_a_full_scan_that_fails(world: World) -> None:
    moved = world.root.with_name("elsewhere")
    world.root.rename(moved)
    outcome = world.outcome(world.tick())
    assert (outcome.scope, outcome.ok) == ("full", False) and "moved" in (outcome.reason or "")
    assert world.location(world.root / "team0" / "team0-0.json") == "present"  # an outage, not deletions
