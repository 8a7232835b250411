"""SQLite leadership: one daemon per database file, the second refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyd.errors import LockHeld
from keyd.inventory.leader import AlwaysLeader, FileLeaderGuard, make_guard


def test_second_guard_on_same_file_is_refused_with_owner_pid(tmp_path: Path) -> None:
    db = tmp_path / "keyd.db"
    first, second = make_guard(f"sqlite:///{db}"), make_guard(f"sqlite:///{db}")
    assert isinstance(first, FileLeaderGuard) and not first.standby_possible
    try:
        assert first.acquire() and first.is_leader()
        with pytest.raises(LockHeld) as info:
            second.acquire()
        assert str(info.value) == f"another keyd owns {db.resolve()} (pid {os.getpid()})"
        assert not second.is_leader()
    finally:
        first.close()
        second.close()


def test_lock_is_free_again_after_close(tmp_path: Path) -> None:
    db = tmp_path / "keyd.db"
    first = FileLeaderGuard(db)
    first.acquire()
    first.close()
    first.close()  # idempotent
    second = FileLeaderGuard(db)
    try:
        assert second.acquire()
        assert (tmp_path / "keyd.db.lock").read_text().strip() == str(os.getpid())
        assert oct((tmp_path / "keyd.db.lock").stat().st_mode & 0o777) == "0o600"
    finally:
        second.close()


def test_in_memory_database_is_always_leader() -> None:
    guard = make_guard("sqlite://")
    assert isinstance(guard, AlwaysLeader)
    assert guard.acquire() and guard.is_leader()
