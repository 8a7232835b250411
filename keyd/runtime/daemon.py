"""``keyd run``: the long-running daemon under systemd (``Type=notify``).

Start: load config, set up logging, build services, refuse an old schema
(``SchemaBehind``: "run keyd db upgrade"), take leadership (SQLite: or
exit with ``LockHeld``; PostgreSQL: or wait as a hot standby), run a first
scan when leader, start the scheduler and the HTTP server, then
``READY=1`` with a one-line ``STATUS=``.

The first scan (100,000 keys: minutes) runs on a worker thread while the
main thread keeps handling signals: every ``start_extension_every``
seconds, if the scan's progress advanced since the last look, it sends
``EXTEND_TIMEOUT_USEC`` (``start_extension``) with ``STATUS=first scan:
...``, so systemd's ``TimeoutStartSec`` does not kill a scan that
advances, and still kills one that is stuck. SIGTERM/SIGINT during it stop
the daemon without ``READY=1``: the scan gets up to ``stop_timeout`` to
finish, then the process exits anyway (its open transaction rolls back;
batches already committed stay, and the next start scans the rest).

Signals (handled on the main thread, which does nothing else):
* SIGHUP: ``RELOADING=1``, load the config again; an invalid one is
  logged and the old one kept. A valid one is swapped in on the work
  thread (so no stage ever sees half of each), then a re-scan runs and
  ``READY=1`` follows. ``database.url`` and ``http.listen`` need a restart.
* SIGTERM/SIGINT: ``STOPPING=1``, stop scheduling, wait for ticks in
  flight (bounded, below systemd's ``TimeoutStopSec``), close, exit 0.

The control tick (its own thread) re-checks leadership, retries it as a
standby, and pings the watchdog, but only while no work tick has gone
``stuck_after`` without progress (``keyd.runtime.liveness``: a long scan
or probe round that advances is not stuck; a wedged one is restarted by
systemd). ``/healthz`` (JSON) shows the work in progress and the chunked
rounds, and turns unhealthy as soon as a stage overruns that deadline
(naming it), before the watchdog gives up.

The outbox (mail, webhooks) runs on its own thread (``MAIL``), so an alert
that is decided goes out while a probe round or token refresh is still
waiting on a slow issuer; every network call has a total deadline
(``keyd.clients.deadline``), so none of them holds a stage for longer.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

from keyd import __version__, progress
from keyd.clock import Clock
from keyd.config import Config
from keyd.errors import KeydError
from keyd.inventory.leader import LeaderGuard, make_guard
from keyd.log import setup_logging
from keyd.report.http import Access, ObservabilityServer
from keyd.report.metrics import KeydMetrics
from keyd.runtime import sdnotify
from keyd.runtime.check import inventory_verdict
from keyd.runtime.cycle import Stage
from keyd.runtime.liveness import Rounds, WorkProgress
from keyd.runtime.scheduler import CONTROL, MAIL, SNAPSHOT, WORK, Tick, TickScheduler, TickStats
from keyd.runtime.views import StatusViews
from keyd.runtime.wiring import Services, build_services
from keyd.store import snapshot
from keyd.store.migrate import ensure_current
from keyd.timeutil import isoformat_z

log = logging.getLogger(__name__)

#: Stages on the mail thread (never behind probes or write-back).
MAIL_STAGES = frozenset({"outbox"})
#: How often each stage's tick looks for due work (seconds).
DEFAULT_INTERVALS = {
    "scan": 300.0,
    "evaluate": 60.0,
    "probe": 30.0,
    "rotate": 30.0,
    "tokens": 30.0,
    "outbox": 30.0,
    "prune": 6 * 3600.0,
    "metrics": 15.0,
}


@dataclass
class DaemonSettings:
    control_interval: float = 5.0  # leadership re-check / standby retry / watchdog
    stop_timeout: float = 20.0  # keep below TimeoutStopSec (30 s in keyd.service)
    stuck_after: float = 900.0  # a work tick this long without progress stops the watchdog pings
    intervals: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_INTERVALS))


StagesFor = Callable[[Services], Sequence[Stage]]


#: Sent to the main thread's signal queue when the first scan's worker ends.
_FIRST_SCAN_DONE = 0


class Daemon:
    """One ``keyd run``. ``load()`` reads the config (again on SIGHUP);
    ``stages_for(services)`` returns the cycle's stages (the ticks)."""

    #: While the first scan advances, ask systemd for this many more seconds
    #: of start-up (EXTEND_TIMEOUT_USEC) every ``start_extension_every``
    #: seconds: three chances per extension. Attributes, for tests only.
    start_extension: float = 90.0
    start_extension_every: float = 30.0
    #: How long a stop waits for the first scan's worker (None: stop_timeout).
    first_scan_stop_wait: float | None = None

    def __init__(
        self,
        load: Callable[[], Config],
        clock: Clock,
        stages_for: StagesFor,
        settings: DaemonSettings | None = None,
        *,
        log_level: str | None = None,
    ) -> None:
        self._load = load
        self._log_level = log_level  # --debug overrides [log] level
        self._clock = clock
        self._stages_for = stages_for
        self.settings = settings or DaemonSettings()
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._swap = threading.Lock()
        self._mail = threading.Lock()  # held by the outbox tick; a reload waits for it
        self._role: str | None = None
        self._started_mono = clock.monotonic()
        self.progress = WorkProgress(clock)  # progress inside ticks (/healthz, watchdog)
        self.rounds = Rounds(clock)  # chunked rounds (the probe round)
        self.services: Services | None = None
        self.guard: LeaderGuard | None = None
        self.scheduler: TickScheduler | None = None
        self._http: ObservabilityServer | None = None
        self._first_scan_thread: threading.Thread | None = None
        self._first_scan_started = (clock.now(), clock.monotonic())

    # --- lifecycle --------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (0)."""
        config = self._load()
        setup_logging(config.log.format, self._log_level or config.log.level)
        watchdog = sdnotify.watchdog_interval()
        if watchdog is not None:  # ping at least three times per watchdog period
            self.settings.control_interval = min(self.settings.control_interval, watchdog / 3)
        previous = self._install_signal_handlers()
        try:
            with progress.reporting(self.progress):
                if not self._start(config):
                    return 0  # stopped during the first scan: never READY
                status = self.status_line()
                sdnotify.ready(status)
                log.info("keyd %s running: %s", __version__, status)
                self._wait_for_signals()
        finally:
            self._stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 0

    def _start(self, config: Config) -> bool:
        """Start up to READY; False when a stop signal came during the first scan."""
        self.services = build_services(config, self._clock)
        ensure_current(self.services.engine)
        self.guard = make_guard(config.database.url)
        leader = self.guard.acquire()  # LockHeld propagates: a second SQLite daemon exits
        self._role = "leader" if leader else "standby"
        self.scheduler = TickScheduler(clock=self._clock, gate=self._is_leader)
        self.services.metrics = self._metrics(self.services)
        if config.http.listen:
            self._http = ObservabilityServer(
                config.http.listen,
                self.services.metrics,
                self.health,
                self.ready,
                views=StatusViews(self._current_services),
                access=_access(config),
            )
            self._http.start()
        if leader:
            if not self._supervise_first_scan():
                return False
        else:
            log.info(
                "standby: another keyd leads %s; retrying every %gs",
                self.guard.describe(),
                self.settings.control_interval,
            )
        self._register_ticks()
        self._started_mono = self._clock.monotonic()  # /healthz: the control tick is due from now
        self.scheduler.start()
        if leader:
            self._catch_up(skip=("scan",))
        return True

    def _catch_up(self, skip: tuple[str, ...] = ()) -> None:
        """Run every work tick once now instead of one interval from now:
        whatever fell due while no leader was working is done at once."""
        assert self.scheduler is not None
        for name, tick in list(self.scheduler.ticks.items()):
            if tick.leader_only and name not in skip:
                self.scheduler.run_soon(name)

    def _stop(self) -> None:
        sdnotify.stopping()
        scan = self._first_scan_thread
        scan_stuck = False
        if scan is not None and scan.is_alive():
            wait = self.first_scan_stop_wait
            scan.join(self.settings.stop_timeout if wait is None else wait)
            if scan.is_alive():
                log.warning("first scan still running: exiting without it (its open transaction rolls back)")
                scan_stuck = True
        clean = True
        if self.scheduler is not None and self.scheduler.running:
            clean = self.scheduler.shutdown(timeout=self.settings.stop_timeout)
        if self._http is not None:
            self._http.close()
        if not scan_stuck:  # else they are the first scan's: the exit releases them
            if self.guard is not None:
                self.guard.close()
            if self.services is not None:
                self.services.close()
        log.info("keyd stopped")
        if scan_stuck or not clean:  # a stuck worker thread would block interpreter exit
            logging.shutdown()
            os._exit(0)

    # --- signals ----------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Route signals to the main loop; returns the handlers to restore."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self._signals.put(signum)  # SimpleQueue.put is safe in a signal handler

        return {
            signum: signal.signal(signum, handler)
            for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        }

    def _wait_for_signals(self) -> None:
        while True:
            try:
                signum = self._signals.get(timeout=1.0)
            except queue.Empty:
                continue
            if signum == signal.SIGHUP:
                self.reload()
                continue
            log.info("received %s: stopping", signal.Signals(signum).name)
            return

    def request_stop(self) -> None:
        """Stop as if SIGTERM arrived (for embedding and tests)."""
        self._signals.put(signal.SIGTERM)

    # --- reload -----------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP (module docstring)."""
        sdnotify.reloading()
        old = self.services
        assert old is not None and self.scheduler is not None
        try:
            config = self._load()
            _check_reloadable(old.config, config)
        except KeydError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            sdnotify.ready(self.status_line())
            return
        except Exception:  # noqa: BLE001 - a bug in loading must not kill a working daemon
            log.exception("reload failed unexpectedly, keeping the running configuration")
            sdnotify.ready(self.status_line())
            return
        setup_logging(config.log.format, self._log_level or config.log.level)
        self.scheduler.once("reload", lambda: self._swap_in(config))

    def _swap_in(self, config: Config) -> None:
        """On the work thread: no stage is running while services change."""
        old = self.services
        assert old is not None and self.scheduler is not None
        try:
            new = build_services(config, self._clock, engine=old.engine)
        except KeydError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        except Exception:  # noqa: BLE001 - as in reload(): the old services keep running
            log.exception("reload failed unexpectedly, keeping the running configuration")
        else:
            new.metrics = old.metrics
            if new.metrics is not None and new.metrics.per_key != config.http.metrics_per_key:
                new.metrics.per_key = config.http.metrics_per_key
                self.scheduler.once("metrics", lambda: self._refresh_metrics(force=True), executor=SNAPSHOT)
            with self._mail, self._swap:  # the outbox tick runs on its own thread
                new.owns_engine, old.owns_engine = True, False
                self.services = new
                old.close()
            if self._http is not None:  # a new token or metrics_public applies at once
                self._http.access = _access(config)
            self._register_ticks()
            log.info("configuration reloaded from %s", config.path)
            if self._is_leader():
                self._run_stage("scan")
                self._catch_up(skip=("scan",))  # new thresholds, channels: decide now
        finally:
            sdnotify.ready(self.status_line())

    # --- ticks ------------------------------------------------------------

    def _register_ticks(self) -> None:
        assert self.scheduler is not None and self.services is not None
        self.scheduler.add(
            Tick(
                "control", self._control, self.settings.control_interval, executor=CONTROL, leader_only=False
            )
        )
        self.scheduler.add(
            Tick(
                "metrics",
                self._refresh_metrics,
                self.settings.intervals.get("metrics", 15.0),
                executor=SNAPSHOT,
                leader_only=False,
            )
        )
        for stage in self._stages_for(self.services):
            interval = self.settings.intervals.get(stage.name, 60.0)
            executor = MAIL if stage.name in MAIL_STAGES else WORK
            self.scheduler.add(Tick(stage.name, self._stage_runner(stage.name), interval, executor=executor))

    def _stage_runner(self, name: str) -> Callable[[], None]:
        if name in MAIL_STAGES:

            def run_mail() -> None:
                with self._mail:
                    self._run_stage(name)

            return run_mail
        return lambda: self._run_stage(name)

    def _run_stage(self, name: str) -> None:
        """Run the current services' stage ``name`` (looked up at call time,
        so a reload that changed the stages takes effect at the next tick)."""
        services = self.services
        assert services is not None
        for stage in self._stages_for(services):
            if stage.name == name:
                started = self._clock.now()
                result = stage.run(services)
                self.rounds.chunk_done(name, result, started)
                if getattr(result, "more", False) and self.scheduler is not None:
                    self.scheduler.run_next(name)  # next chunk, after what is queued
                if name == "scan":  # keep `systemctl status` current
                    sdnotify.status(self.status_line())
                return

    def _supervise_first_scan(self) -> bool:
        """Run the first scan on a worker while this (main) thread handles
        signals and extends systemd's start timeout as long as the scan
        advances. False when SIGTERM/SIGINT arrived; a SIGHUP waits for READY."""
        every = max(self.start_extension_every, 0.01)

        def work() -> None:
            try:
                self._first_scan()
            finally:
                self._signals.put(_FIRST_SCAN_DONE)

        worker = threading.Thread(target=work, name="first-scan", daemon=True)
        self._first_scan_started = (self._clock.now(), self._clock.monotonic())
        self._first_scan_thread = worker
        worker.start()
        deferred: list[int] = []
        last = self._scan_mark(worker)
        due = time.monotonic() + every
        try:
            while True:
                try:
                    signum = self._signals.get(timeout=max(due - time.monotonic(), 0.0))
                except queue.Empty:
                    signum = None
                if signum == _FIRST_SCAN_DONE:
                    worker.join()
                    return True
                if signum == signal.SIGHUP:
                    deferred.append(signum)
                elif signum is not None:
                    log.info("received %s during the first scan: stopping", signal.Signals(signum).name)
                    return False
                if time.monotonic() >= due:
                    mark = self._scan_mark(worker)
                    if mark != last:  # a stuck scan still hits TimeoutStartSec
                        sdnotify.extend_timeout(self.start_extension, self._first_scan_status(worker))
                    last, due = mark, time.monotonic() + every
        finally:
            for signum in deferred:
                self._signals.put(signum)

    def _scan_mark(self, worker: threading.Thread) -> tuple[object, ...]:
        """What changes whenever the first scan reports progress."""
        activity = self.progress.activity(worker.ident)
        return (
            self.progress.last_progress_mono(worker.ident),
            None if activity is None else (activity.task, activity.done),
        )

    def _first_scan_status(self, worker: threading.Thread) -> str:
        activity = self.progress.activity(worker.ident)
        if activity is None:
            return "first scan"
        total = "" if activity.total is None else f" of {activity.total}"
        return f"first scan: {activity.task}: {activity.done}{total} {activity.unit}"

    def _first_scan(self) -> None:
        cpu = time.thread_time()
        try:
            self._run_stage("scan")
        except Exception as exc:  # the daemon still starts; the scan tick retries
            log.error(
                "first scan failed (retried by the scan tick): %s",
                exc,
                exc_info=not isinstance(exc, KeydError),
            )
        finally:
            assert self.scheduler is not None
            self.scheduler.account("scan", time.thread_time() - cpu)

    def _control(self) -> None:
        guard = self.guard
        assert guard is not None and self.scheduler is not None
        was = self._role
        leader = guard.is_leader() or (guard.standby_possible and guard.acquire())
        self._role = "leader" if leader else "standby"
        if was != self._role:
            log.warning("role changed: %s -> %s", was, self._role)
            if leader:
                watches = self.services.watches if self.services is not None else None
                if watches is not None:  # what changed while another replica led: walk it all
                    watches.request_full("this replica became leader")
                self._catch_up()  # the new leader starts with a full pass
            sdnotify.status(self.status_line())
        if not self._work_stuck():
            sdnotify.watchdog()

    def _work_stuck(self) -> bool:
        overrun = self._overrun()
        if overrun is None:
            return False
        name, started, running, quiet = overrun
        log.error(
            "tick %s stuck (started %s, no progress for %.0fs): no watchdog ping",
            name,
            started.isoformat(),
            quiet,
        )
        return True

    def _overrun(self) -> tuple[str, datetime, float, float] | None:
        """The first tick that has gone longer than the stage deadline
        (``stuck_after``) without progress: name, start, seconds running,
        seconds since its start or its last progress, whichever is later."""
        if self.scheduler is None:
            return None
        for name, stats in list(self.scheduler.stats.items()):
            if stats.running and stats.last_started is not None and name != "control":
                running, quiet = self._quiet_for(stats)
                if quiet > self.settings.stuck_after:
                    return name, stats.last_started, running, quiet
        return None

    def _quiet_for(self, stats: TickStats) -> tuple[float, float]:
        """(seconds running, seconds without progress) of a running tick."""
        assert stats.last_started is not None
        running = (self._clock.now() - stats.last_started).total_seconds()
        last = self.progress.last_progress_mono(stats.thread)
        if last is None:
            return running, running
        return running, min(running, self._clock.monotonic() - last)

    def _is_leader(self) -> bool:
        return self._role == "leader"

    # --- observability ----------------------------------------------------

    def _metrics(self, services: Services) -> KeydMetrics:
        return KeydMetrics(
            services.engine,
            version=__version__,
            leader=lambda: None if self._role is None else self._is_leader(),
            last_tick=self._last_tick,
            per_key=services.config.http.metrics_per_key,
        )

    def _refresh_metrics(self, *, force: bool = False) -> None:
        """The snapshot tick (leader and standby alike: both serve /metrics)."""
        services = self.services
        if services is not None and services.metrics is not None:
            services.metrics.refresh(force=force)

    def _current_services(self) -> Services:
        services = self.services
        assert services is not None  # the HTTP server starts after the services
        return services

    def _last_tick(self) -> datetime | None:
        if self.scheduler is None:
            return None
        done = [s.last_finished for s in self.scheduler.stats.values() if s.last_finished]
        return max(done, default=None)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``'s JSON: ``healthy()``, the ticks running now (with
        the task in progress and its last progress) and the chunked rounds."""
        ok, reason = self.healthy()
        return ok, {
            "status": "ok" if ok else "unhealthy",
            "reason": reason,
            "running": self._running_json(),
            "rounds": self.rounds.to_json(),
            "cpu_seconds": round(time.process_time(), 3),
            "ticks": self._ticks_json(),
            "watch": self._watch_json(),
        }

    def _watch_json(self) -> dict[str, Any] | None:
        """The directory watchers (``keyd.inventory.watched``), once the scan tick made them."""
        services = self.services
        watches = services.watches if services is not None else None
        return watches.to_json() if watches is not None else None

    def _ticks_json(self) -> dict[str, Any]:
        """Per tick: its interval, runs, CPU in total and of the last run
        (what the daemon spends its CPU on; the rest of ``cpu_seconds`` is
        start-up, the HTTP server and the scheduler's own loop)."""
        if self.scheduler is None:
            return {}
        ticks = self.scheduler.ticks
        out: dict[str, Any] = {}
        for name, stats in sorted(self.scheduler.stats.items()):
            tick = ticks.get(name)
            out[name] = {
                "interval_seconds": tick.interval if tick is not None else None,
                "runs": stats.runs,
                "cpu_seconds": round(stats.cpu_seconds, 3),
                "last_cpu_seconds": None
                if stats.last_cpu_seconds is None
                else round(stats.last_cpu_seconds, 3),
            }
        return out

    def _first_scan_running(self) -> tuple[threading.Thread, float, float] | None:
        """The first scan's worker while it runs: (thread, seconds running,
        seconds without progress)."""
        scan = self._first_scan_thread
        if scan is None or not scan.is_alive():
            return None
        now = self._clock.monotonic()
        last = self.progress.last_progress_mono(scan.ident)
        started = self._first_scan_started[1]
        return scan, now - started, now - max(started, last if last is not None else started)

    def _running_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first = self._first_scan_running()
        if first is not None:  # before READY: the scheduler is not ticking yet
            scan, running, quiet = first
            activity = self.progress.activity(scan.ident)
            out["first_scan"] = {
                "started": isoformat_z(self._first_scan_started[0]),
                "running_seconds": round(running, 1),
                "seconds_without_progress": round(quiet, 1),
                "progress": activity.to_json() if activity is not None else None,
            }
        if self.scheduler is None:
            return out
        for name, stats in list(self.scheduler.stats.items()):
            if not stats.running or stats.last_started is None or name == "control":
                continue
            running, quiet = self._quiet_for(stats)
            activity = self.progress.activity(stats.thread)
            out[name] = {
                "started": isoformat_z(stats.last_started),
                "running_seconds": round(running, 1),
                "seconds_without_progress": round(quiet, 1),
                "progress": activity.to_json() if activity is not None else None,
            }
        return out

    def healthy(self) -> tuple[bool, str]:
        """The control tick ran within 3 intervals and no stage has gone
        past its deadline without progress. During the first scan: healthy
        while it advances (the scheduler starts after it)."""
        first = self._first_scan_running()
        if first is not None:
            _scan, running, quiet = first
            if quiet > self.settings.stuck_after:
                return False, f"first scan without progress for {quiet:.0f}s (running for {running:.0f}s)"
            return True, "first scan in progress"
        overrun = self._overrun()
        if overrun is not None:
            name, _started, running, quiet = overrun
            return False, (
                f"stage {name} without progress for {quiet:.0f}s "
                f"(running for {running:.0f}s, deadline {self.settings.stuck_after:.0f}s)"
            )
        limit = 3 * self.settings.control_interval
        stats = self.scheduler.stats.get("control") if self.scheduler else None
        last = stats.last_finished_mono if stats and stats.last_finished_mono else None
        age = self._clock.monotonic() - (last if last is not None else self._started_mono)
        if age > limit:
            return False, f"scheduler has not ticked for {age:.0f}s (limit {limit:.0f}s)"
        return True, "ok"

    def ready(self) -> tuple[bool, dict[str, object]]:
        """``/readyz``: database reachable and the role known."""
        services = self.services
        if services is None or self._role is None:
            return False, {"role": None, "database": "unknown"}
        if not snapshot.ping(services.engine):
            return False, {"role": self._role, "database": "unreachable"}
        return True, {"role": self._role}

    def status_line(self) -> str:
        """One line for ``STATUS=`` (and ``systemctl status``)."""
        services = self.services
        if services is None or self.guard is None:
            return "starting"
        if not self._is_leader():
            return f"standby: another keyd leads {self.guard.describe()}"
        try:
            verdict = inventory_verdict(services.config, services.engine, self._clock.now())
        except Exception as exc:  # a status line is not worth failing for
            return f"leader: inventory unreadable ({type(exc).__name__})"
        c = verdict.counts
        return (
            f"leader: {c['keys']} keys, {c['expiring']} expiring, {c['expired']} expired, "
            f"{c['rejected']} rejected, {c['invalid']} invalid ({verdict.status})"
        )


def _access(config: Config) -> Access:
    return Access(config.http.auth_token, config.http.metrics_public)


def _check_reloadable(old: Config, new: Config) -> None:
    if old.database.url != new.database.url:
        raise KeydError("database.url changed: restart keyd to switch databases")
    if old.http.listen != new.http.listen:
        log.warning("http.listen changed: takes effect at the next restart")
