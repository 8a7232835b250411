"""The tick scheduler: ticks run, failures are contained, standbys skip work."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from keyd.clock import FakeClock
from keyd.errors import VaultUnavailable
from keyd.runtime.scheduler import CONTROL, Tick, TickScheduler


@pytest.fixture
def sched() -> Iterator[TickScheduler]:
    s = TickScheduler(clock=FakeClock())
    yield s
    s.shutdown(timeout=2)


def _counter(n: int) -> tuple[threading.Event, list[int], Callable[[], None]]:
    done = threading.Event()
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        if len(calls) >= n:
            done.set()

    return done, calls, fn


def test_tick_runs_repeatedly(sched: TickScheduler) -> None:
    done, calls, fn = _counter(3)
    sched.add(Tick("probe", fn, interval=0.05))
    sched.start()
    assert done.wait(3)
    assert sched.stats["probe"].runs >= 3 and sched.stats["probe"].failures == 0
    assert sched.stats["probe"].last_ok is not None


def test_each_tick_s_cpu_is_added_up(sched: TickScheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU per tick, read off the thread that ran it (``/healthz`` "ticks"):
    each run's ``thread_time`` difference, a failed run's too."""
    from keyd.runtime import scheduler as module

    cpu = iter(range(0, 1000, 3))  # each call 3 s later: every run costs 3 s
    monkeypatch.setattr(module.time, "thread_time", lambda: float(next(cpu)))
    done = threading.Event()
    runs: list[int] = []

    def fn() -> None:
        runs.append(1)
        if len(runs) == 2:
            raise RuntimeError("boom")
        if len(runs) == 3:
            done.set()

    sched.add(Tick("scan", fn, interval=0.05))
    sched.account("scan", 7.0)  # the daemon's first scan, run before start
    sched.start()
    assert done.wait(3)
    sched.shutdown(timeout=2)
    stats = sched.stats["scan"]
    assert stats.runs >= 4 and stats.failures == 1  # one more may have started before the shutdown
    assert stats.cpu_seconds == 7.0 + 3.0 * (stats.runs - 1) and stats.last_cpu_seconds == 3.0


def test_failing_tick_is_logged_and_retried(sched: TickScheduler, caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("boom")
        if len(attempts) == 2:
            raise VaultUnavailable("sealed", path="secret/x")
        done.set()

    other_done, _, other = _counter(3)
    sched.add(Tick("scan", flaky, interval=0.05))
    sched.add(Tick("heartbeat", other, interval=0.05, executor=CONTROL))
    with caplog.at_level(logging.ERROR, logger="keyd.runtime.scheduler"):
        sched.start()
        assert done.wait(3) and other_done.wait(3)
    stats = sched.stats["scan"]
    assert stats.failures == 2 and stats.last_error is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("tick scan failed (run 1" in m and "RuntimeError: boom" in m for m in messages)
    # retryable KeydError: logged without a traceback; a bug: with one
    assert any(r.exc_info for r in caplog.records if "boom" in r.getMessage())
    assert not any(r.exc_info for r in caplog.records if "sealed" in r.getMessage())


def test_standby_skips_leader_only_ticks() -> None:
    leader = threading.Event()
    sched = TickScheduler(clock=FakeClock(), gate=leader.is_set)
    work_done, work_calls, work = _counter(1)
    hb_done, _, heartbeat = _counter(3)
    sched.add(Tick("probe", work, interval=0.05))
    sched.add(Tick("heartbeat", heartbeat, interval=0.05, executor=CONTROL, leader_only=False))
    try:
        sched.start()
        assert hb_done.wait(3)
        assert work_calls == [] and sched.stats["probe"].skipped >= 1
        leader.set()
        assert work_done.wait(3)
    finally:
        sched.shutdown(timeout=2)


def test_run_soon_and_bounded_shutdown() -> None:
    sched = TickScheduler(clock=FakeClock())
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)

    sched.add(Tick("scan", slow, interval=3600))
    sched.start()
    sched.run_soon("scan")  # does not wait an hour
    assert started.wait(3)
    assert sched.shutdown(timeout=0.1) is False  # still in flight: reported
    release.set()
    assert sched.shutdown(timeout=3) is True


def test_rejects_nonsense_interval(sched: TickScheduler) -> None:
    with pytest.raises(ValueError, match="interval"):
        sched.add(Tick("x", lambda: None, interval=0))


def test_overrun_warnings_are_demoted(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)

    sched = TickScheduler(clock=FakeClock())
    sched.add(Tick("probe", slow, interval=0.05))
    with caplog.at_level(logging.DEBUG):
        sched.start()
        assert started.wait(3)
        threading.Event().wait(0.3)  # several intervals pass while the run is busy
        release.set()
        sched.shutdown(timeout=3)
    noisy = [
        r
        for r in caplog.records
        if r.name.startswith("apscheduler") and "maximum number of running instances" in r.getMessage()
    ]
    assert noisy == []
    assert any(
        "maximum number of running instances" in r.getMessage()
        for r in caplog.records
        if r.name == "keyd.runtime.scheduler"
    )
