"""The one source of "now" (docs/architecture.md rule 3).

Everything that needs the time takes a ``Clock``. Production code uses
``SystemClock``; tests use ``FakeClock`` and ``advance()`` instead of
waiting for real time. All datetimes are aware and in UTC.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, aware, in UTC."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for measuring intervals."""

    def sleep(self, seconds: float) -> None:
        """Wait (or pretend to wait) ``seconds``."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that only moves when told; ``sleep`` advances it."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 1000.0
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, delta: timedelta | float) -> datetime:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds
            return self._now

    def set(self, instant: datetime) -> None:
        with self._lock:
            delta = (instant - self._now).total_seconds()
            self._now = instant.astimezone(UTC)
            self._mono += max(delta, 0.0)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds > 0:
            self.advance(seconds)


def utc(dt: datetime) -> datetime:
    """Normalise to aware UTC; a naive value is taken to be UTC already
    (SQLite returns naive timestamps: this is the edge where they are fixed)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)
