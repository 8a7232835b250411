"""One active daemon per inventory (docs/architecture.md §8).

``LeaderGuard`` is what the daemon asks "may I work?":

* SQLite: an exclusive ``fcntl.flock`` on ``<db file>.lock``. There is no
  standby on one host: a second daemon gets ``LockHeld`` ("another keyd
  owns /var/lib/keyd/keyd.db (pid N)") and exits.
* PostgreSQL: a session advisory lock on a dedicated connection
  (``keyd.store.locks.AdvisoryLock``). Losers are hot standbys: they call
  ``acquire()`` again every few seconds and win as soon as the leader's
  connection is gone. The leader calls ``is_leader()`` on every tick; a
  dropped connection means leadership is lost and work stops at once.
  (A partitioned leader notices within ~10 s via TCP timeouts; the unique
  constraints on alerts make a short overlap harmless.)
* In-memory SQLite: nothing to share, always the leader.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Literal, Protocol

from keyd.errors import LockHeld
from keyd.store.engine import safe_url
from keyd.store.locks import AdvisoryLock, database_kind, sqlite_path

log = logging.getLogger(__name__)

Role = Literal["leader", "standby"]


class LeaderGuard(Protocol):
    #: False when losing means "exit" rather than "wait as a standby".
    standby_possible: bool

    def acquire(self) -> bool:
        """Try once, never block. True if this process is now the leader."""

    def is_leader(self) -> bool:
        """Re-check (each tick) that leadership is still held."""

    def describe(self) -> str:
        """What is guarded, for STATUS= and logs."""

    def close(self) -> None:
        """Give leadership up (idempotent)."""


class FileLeaderGuard:
    """``flock(LOCK_EX | LOCK_NB)`` on ``<db>.lock``; the holder's pid is
    written into the file so the refusal can name it."""

    standby_possible = False

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.lock_path = db_path.with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True, or ``LockHeld`` naming the owner's pid."""
        if self._fd is not None:
            return True
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise LockHeld(f"another keyd owns {self.db_path} (pid {owner})") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def is_leader(self) -> bool:
        return self._fd is not None

    def describe(self) -> str:
        return str(self.db_path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class AdvisoryLeaderGuard:
    """PostgreSQL: hot standby until the advisory lock is free."""

    standby_possible = True

    def __init__(self, url: str, lock: AdvisoryLock | None = None) -> None:
        self._lock = lock or AdvisoryLock(url)
        self._leader = False
        self._where = safe_url(url)

    def acquire(self) -> bool:
        was = self._leader
        self._leader = self._lock.try_acquire()
        if self._leader and not was:
            log.info("leader: acquired the advisory lock on %s", self._where)
        return self._leader

    def is_leader(self) -> bool:
        if self._leader and not self._lock.held():
            log.error("leader: lost leadership of %s (connection dropped); stopping work", self._where)
            self._leader = False
        return self._leader

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._leader = False
        self._lock.close()


class AlwaysLeader:
    """In-memory SQLite: a private database has one user by construction."""

    standby_possible = False

    def acquire(self) -> bool:
        return True

    def is_leader(self) -> bool:
        return True

    def describe(self) -> str:
        return "in-memory database"

    def close(self) -> None:
        return None


def make_guard(url: str) -> LeaderGuard:
    """The guard for a database URL (see the module docstring)."""
    if database_kind(url) == "postgresql":
        return AdvisoryLeaderGuard(url)
    path = sqlite_path(url)
    return AlwaysLeader() if path is None else FileLeaderGuard(path)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
