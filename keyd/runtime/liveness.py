"""Progress inside long work, for ``/healthz`` and the watchdog (docs/daemon.md
"Watchdog and progress").

A tick that runs for minutes is healthy as long as it advances. Two
sources of evidence, both cheap:

* ``WorkProgress``, the daemon's ``keyd.progress`` listener: the stages
  already report ``begin``/``advance``/``end`` (files of a directory scan,
  secrets of a vault source, keys of a probe chunk); this keeps, per
  thread, the task in progress, items done and total, and the instant of
  the last advance. The scheduler records which thread runs which tick, so
  the watchdog judges a tick by *its own* last progress.
* ``Rounds``: a chunked stage (the probe round, the alert evaluation with
  many keys due) is one round over several ticks; this counts its chunks
  and items and keeps what the stage says is still due, so ``/healthz``
  shows a round advancing chunk by chunk.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyd.clock import Clock
from keyd.timeutil import isoformat_z


@dataclass
class Activity:
    """One task in progress on one thread."""

    task: str
    unit: str
    total: int | None
    started: datetime
    last_progress: datetime
    last_progress_mono: float
    done: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "started": isoformat_z(self.started),
            "last_progress": isoformat_z(self.last_progress),
        }


class WorkProgress:
    """A ``keyd.progress.Listener`` that remembers, per thread, the task in
    progress and when it last advanced (thread-safe; never raises)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[int, Activity] = {}
        self._last: dict[int, float] = {}  # thread -> monotonic instant of its last progress

    def begin(self, task: str, total: int | None, unit: str) -> None:
        now, mono = self._clock.now(), self._clock.monotonic()
        with self._lock:
            ident = threading.get_ident()
            self._active[ident] = Activity(task, unit, total, now, now, mono)
            self._last[ident] = mono

    def advance(self, task: str, n: int) -> None:
        now, mono = self._clock.now(), self._clock.monotonic()
        with self._lock:
            ident = threading.get_ident()
            self._last[ident] = mono
            activity = self._active.get(ident)
            if activity is not None and activity.task == task:
                activity.done += n
                activity.last_progress, activity.last_progress_mono = now, mono

    def end(self, task: str) -> None:
        with self._lock:
            ident = threading.get_ident()
            self._last[ident] = self._clock.monotonic()
            activity = self._active.get(ident)
            if activity is not None and activity.task == task:
                del self._active[ident]

    def last_progress_mono(self, thread: int | None) -> float | None:
        """When work on ``thread`` last advanced (monotonic), if ever."""
        if thread is None:
            return None
        with self._lock:
            return self._last.get(thread)

    def activity(self, thread: int | None) -> Activity | None:
        if thread is None:
            return None
        with self._lock:
            return self._active.get(thread)


@dataclass
class Round:
    """A chunked stage's round: chunks and items so far, what is still due."""

    started: datetime
    chunks: int = 0
    items: int = 0
    remaining: int | None = None
    finished: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "started": isoformat_z(self.started),
            "chunks_done": self.chunks,
            "done": self.items,
            "remaining": self.remaining,
            "finished": isoformat_z(self.finished) if self.finished else None,
        }


class Rounds:
    """The current (or last) round of each chunked stage (probe, evaluate)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rounds: dict[str, Round] = {}

    def chunk_done(self, stage: str, result: object, started: datetime) -> None:
        """Record one finished run of ``stage``. A run is a chunk of a round
        when it or the one before it said ``more``; a round ends with the
        first chunk that does not (``started``: when this run began).
        Single-run work is not tracked."""
        more = bool(getattr(result, "more", False))
        items = getattr(result, "items", None)  # keys done (the evaluation), else one per result
        if not isinstance(items, int):
            items = len(getattr(result, "results", ()) or ())
        now = self._clock.now()
        with self._lock:
            current = self._rounds.get(stage)
            if current is None or current.finished is not None:
                if not more:
                    return
                current = self._rounds[stage] = Round(started=started)
            current.chunks += 1
            current.items += items
            current.remaining = getattr(result, "remaining", None) if more else 0
            if not more:
                current.finished = now

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {stage: r.to_json() for stage, r in self._rounds.items()}
