"""The tick scheduler: the only importer of APScheduler (docs/architecture.md rule 1).

A *tick* is a plain callable run periodically. The scheduler decides only
*when to look*; what to do is decided by the callable from due times
stored in the database (``next_probe_at``, ``next_refresh_at``,
``next_attempt_at``, ...). That is why keyd needs no persistent job store:
after downtime or a suspend, the first tick finds everything overdue and
does it exactly once (no burst of missed runs, no skip), docs/architecture.md §5.

Choices, deliberately:

* ``BackgroundScheduler``, in-memory job store, UTC.
* ``coalesce=True``: runs missed while busy collapse into one.
* ``max_instances=1``: a slow tick is never run twice at once.
* ``misfire_grace_time = interval``: a run delayed by less than one interval
  still happens; a later one is dropped because the next is due anyway.
* Work ticks share a one-thread executor, so stages never race each other
  on the database (SQLite has one writer); control ticks (heartbeat,
  leadership check, watchdog ping) have their own thread and keep
  running while a long scan is in progress. Mail (the outbox) has its own
  thread too (``MAIL``): an alert already decided is never queued behind
  a probe round or a token refresh. Its transactions are short (claim,
  mark), so it shares the database with the work thread without waits
  worth the name.
* Each tick's CPU (``time.thread_time`` of the thread that ran it: all of
  a tick's work, SQLite included, happens there) is added up in its
  ``TickStats``, so ``/healthz`` can say what an idle daemon spends its
  CPU on, tick by tick.
* A tick never crashes the daemon: exceptions are logged with the tick's
  name and the tick simply runs again at its next interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from keyd.clock import Clock
from keyd.errors import KeydError

log = logging.getLogger(__name__)

WORK = "work"
CONTROL = "control"
SNAPSHOT = "snapshot"  # the /metrics snapshot: neither waits for nor delays work
MAIL = "mail"


class _Overrun(logging.Filter):
    """APScheduler warns each time a tick is skipped because the previous
    run is still going (or started too late). With ``max_instances=1`` and
    coalescing that is the intended behaviour, not news: demote to DEBUG."""

    NOISE = ("maximum number of running instances reached", "was missed by")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(noise in message for noise in self.NOISE):
            log.debug("scheduler: %s", message)
            return False
        return True


def _quiet_overruns() -> None:
    for name in (
        "apscheduler.scheduler",
        *(f"apscheduler.executors.{n}" for n in (WORK, CONTROL, SNAPSHOT, MAIL)),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Overrun) for f in logger.filters):
            logger.addFilter(_Overrun())


@dataclass(frozen=True)
class Tick:
    """``fn`` every ``interval`` seconds. ``leader_only`` ticks are skipped
    (not failed) while the gate says this process is a standby."""

    name: str
    fn: Callable[[], object]
    interval: float
    executor: str = WORK
    leader_only: bool = True


@dataclass
class TickStats:
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    last_started: datetime | None = None
    last_finished: datetime | None = None
    last_ok: datetime | None = None
    last_finished_mono: float | None = None
    last_error: str | None = None
    running: bool = False
    thread: int | None = None  # the thread running it (its progress: keyd.runtime.liveness)
    cpu_seconds: float = 0.0  # CPU of its runs so far, on the thread that ran them
    last_cpu_seconds: float | None = None  # of the last run

    def add_cpu(self, seconds: float) -> None:
        self.cpu_seconds += seconds
        self.last_cpu_seconds = seconds


@dataclass
class TickScheduler:
    """Registry + APScheduler. ``gate()`` is asked before each leader-only tick."""

    clock: Clock
    gate: Callable[[], bool] = lambda: True
    ticks: dict[str, Tick] = field(default_factory=dict)
    stats: dict[str, TickStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._chunks = 0
        _quiet_overruns()
        self._sched = BackgroundScheduler(
            timezone=UTC,
            jobstores={"default": MemoryJobStore()},
            executors={
                WORK: ThreadPoolExecutor(1),
                CONTROL: ThreadPoolExecutor(1),
                SNAPSHOT: ThreadPoolExecutor(1),
                MAIL: ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def add(self, tick: Tick) -> None:
        """Register ``tick`` (before or after ``start``); replaces one of the same name."""
        if tick.interval <= 0:
            raise ValueError(f"tick {tick.name!r}: interval must be positive")
        self.ticks[tick.name] = tick
        self.stats.setdefault(tick.name, TickStats())
        self._sched.add_job(
            self._runner(tick),
            IntervalTrigger(seconds=tick.interval, timezone=UTC),
            id=tick.name,
            name=tick.name,
            executor=tick.executor,
            replace_existing=True,
            misfire_grace_time=max(1, int(tick.interval)),
        )

    def run_next(self, name: str) -> None:
        """Queue the next chunk of tick ``name`` from inside its current run:
        it runs once the work thread is free, after the ticks already queued
        (mail, alerts), never concurrently. Alternating job ids, because a
        one-off with the id of the run in progress would be refused."""
        self._chunks += 1
        tick = self.ticks[name]
        self._sched.add_job(
            self._runner(tick),
            id=f"{name}:chunk{self._chunks % 2}",
            name=f"{name} (next chunk)",
            executor=tick.executor,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def run_soon(self, name: str) -> None:
        """Run tick ``name`` once as soon as its executor is free (e.g. the
        re-scan after SIGHUP), without disturbing its interval."""
        tick = self.ticks[name]
        self._sched.add_job(
            self._runner(tick),
            id=f"{name}:now",
            name=f"{name} (now)",
            executor=tick.executor,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def once(self, name: str, fn: Callable[[], object], executor: str = WORK) -> None:
        """Run ``fn`` once, soon, on ``executor`` (e.g. the config swap after
        SIGHUP, which must not overlap a work tick). Not a registered tick."""
        tick = Tick(name, fn, interval=1.0, executor=executor, leader_only=False)
        self.stats.setdefault(name, TickStats())
        self._sched.add_job(
            self._runner(tick),
            id=f"{name}:once",
            name=name,
            executor=executor,
            replace_existing=True,
            misfire_grace_time=None,
        )

    def account(self, name: str, cpu_seconds: float) -> None:
        """Count one run of ``name`` done outside the scheduler (the
        daemon's first scan, before ``start``) with the CPU it used."""
        stats = self.stats.setdefault(name, TickStats())
        stats.add_cpu(cpu_seconds)
        stats.runs += 1

    def start(self) -> None:
        self._sched.start()

    @property
    def running(self) -> bool:
        return bool(self._sched.running)

    def shutdown(self, timeout: float) -> bool:
        """Stop scheduling and wait up to ``timeout`` seconds for ticks in
        flight. False if some were still running (the caller exits anyway)."""
        if self._sched.running:
            # APScheduler 3 race: shutdown() flags STOPPED before taking the
            # job-store lock, so a _process_jobs pass in progress then fails
            # to remove a one-off job it just submitted. Pause (no new pass),
            # let the current pass finish (its lock), then shut down.
            self._sched.pause()
            with self._sched._jobstores_lock:
                pass
            self._sched.shutdown(wait=False)
        with self._idle:
            done = self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)
        if not done:
            busy = [n for n, s in self.stats.items() if s.running]
            log.error("scheduler: ticks still running after %.0fs: %s", timeout, ", ".join(busy))
        return done

    def _runner(self, tick: Tick) -> Callable[[], None]:
        def run() -> None:
            self._run(tick)

        return run

    def _run(self, tick: Tick) -> None:
        stats = self.stats[tick.name]
        if tick.leader_only and not self.gate():
            stats.skipped += 1
            return
        with self._lock:
            self._in_flight += 1
            stats.running = True
            stats.thread = threading.get_ident()
        stats.last_started = self.clock.now()
        cpu = time.thread_time()
        try:
            tick.fn()
        except KeydError as exc:
            self._failed(tick, stats, exc, traceback=not exc.retryable)
        except Exception as exc:  # a tick must never take the daemon down
            self._failed(tick, stats, exc, traceback=True)
        else:
            stats.last_ok = self.clock.now()
            stats.last_error = None
        finally:
            stats.add_cpu(time.thread_time() - cpu)
            stats.runs += 1
            stats.last_finished = self.clock.now()
            stats.last_finished_mono = self.clock.monotonic()
            with self._idle:
                self._in_flight -= 1
                stats.running = False
                self._idle.notify_all()

    def _failed(self, tick: Tick, stats: TickStats, exc: Exception, *, traceback: bool) -> None:
        stats.failures += 1
        stats.last_error = f"{type(exc).__name__}: {exc}"
        log.error(
            "tick %s failed (run %d, retried in %gs): %s",
            tick.name,
            stats.runs + 1,
            tick.interval,
            stats.last_error,
            exc_info=exc if traceback else None,
        )
