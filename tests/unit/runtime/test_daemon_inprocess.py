"""The daemon in-process with fake stages: start-up refusals, catch-up,
reload rules, health, and a stop that restores signal handlers."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from keyd import progress
from keyd.actions.alerts import EvaluationReport
from keyd.checks.probe import ProbeReport, ProbeResult
from keyd.cli import main
from keyd.clock import FakeClock, SystemClock
from keyd.config import Config, DatabaseConfig
from keyd.inventory.leader import FileLeaderGuard
from keyd.runtime import sdnotify, stages
from keyd.runtime.cycle import Stage
from keyd.runtime.daemon import Daemon, DaemonSettings
from keyd.runtime.scheduler import TickScheduler, TickStats
from keyd.runtime.wiring import Services
from keyd.store.migrate import upgrade
from keyd.timeutil import isoformat_z
from keyd.vocab import ProbeOutcome


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "keyd.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "keyd.db"}"\n')
    return config


def test_old_schema_refuses_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--config", str(write_config(tmp_path)), "run"]) == 4
    assert "keyd db upgrade" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_second_daemon_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    upgrade(f"sqlite:///{tmp_path / 'keyd.db'}")
    holder = FileLeaderGuard(tmp_path / "keyd.db")
    holder.acquire()
    try:
        assert main(["--config", str(config), "run"]) == 4
        assert "another keyd owns" in capsys.readouterr().err
    finally:
        holder.close()


class Calls:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.evaluated = threading.Event()

    def stages(self, services: Services) -> list[Stage]:
        def record(name: str) -> Stage:
            def run(_: Services) -> None:
                self.names.append(name)
                if name == "evaluate":
                    self.evaluated.set()

            return Stage(name, run)

        return [record("scan"), record("evaluate")]


def test_run_catches_up_reloads_and_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keyd.db'}"
    upgrade(url)
    config = Config(database=DatabaseConfig(url=url))
    configs = [config]
    calls = Calls()
    daemon = Daemon(
        lambda: configs[-1], SystemClock(), calls.stages, DaemonSettings(control_interval=0.2, stop_timeout=5)
    )
    outcome: list[object] = []

    def drive() -> None:
        try:
            assert calls.evaluated.wait(10)  # catch-up: evaluate ran at start, not in 60 s
            assert calls.names[0] == "scan"  # the first scan ran before anything else
            scan = daemon.health()[1]["ticks"]["scan"]  # its CPU is accounted to the scan tick
            assert scan["runs"] >= 1 and scan["last_cpu_seconds"] is not None
            assert scan["interval_seconds"] == 300.0
            configs.append(replace(config, database=DatabaseConfig(url="sqlite://")))
            daemon.reload()  # database.url changed: rejected, old services kept
            assert daemon.services is not None and daemon.services.config is config
            assert daemon.healthy()[0] and daemon.ready() == (True, {"role": "leader"})
            outcome.append("ok")
        except BaseException as exc:  # reported below, on the main thread
            outcome.append(exc)
        finally:
            daemon.request_stop()

    driver = threading.Thread(target=drive)
    driver.start()
    assert daemon.run() == 0
    driver.join(10)
    assert outcome == ["ok"], outcome
    after = FileLeaderGuard(tmp_path / "keyd.db")  # the stopped daemon let the lock go
    assert after.acquire()
    after.close()


def test_health_needs_recent_control_ticks() -> None:
    clock = FakeClock()
    daemon = Daemon(lambda: Config(), clock, lambda s: [], DaemonSettings(control_interval=5))
    assert daemon.healthy() == (True, "ok")
    clock.advance(16)
    ok, why = daemon.healthy()
    assert not ok and "has not ticked for 16s (limit 15s)" in why
    assert daemon.ready() == (False, {"role": None, "database": "unknown"})


def test_health_turns_bad_when_a_stage_overruns_its_deadline() -> None:
    clock = FakeClock()
    daemon = Daemon(lambda: Config(), clock, lambda s: [], DaemonSettings(control_interval=5, stuck_after=60))
    daemon.scheduler = TickScheduler(clock=clock)
    daemon.scheduler.stats["control"] = TickStats(last_finished_mono=clock.monotonic())
    daemon.scheduler.stats["probe"] = TickStats(running=True, last_started=clock.now())
    clock.advance(59)
    daemon.scheduler.stats["control"].last_finished_mono = clock.monotonic()
    assert daemon.healthy() == (True, "ok")  # within the deadline
    clock.advance(2)
    daemon.scheduler.stats["control"].last_finished_mono = clock.monotonic()
    ok, why = daemon.healthy()
    assert not ok and why == "stage probe without progress for 61s (running for 61s, deadline 60s)"
    assert daemon._work_stuck()  # and the watchdog pings stop


def _long_tick(clock: FakeClock) -> tuple[Daemon, TickStats]:
    """A daemon whose probe tick runs on this thread since now."""
    daemon = Daemon(lambda: Config(), clock, lambda s: [], DaemonSettings(control_interval=5, stuck_after=60))
    daemon.scheduler = TickScheduler(clock=clock)
    daemon.scheduler.stats["control"] = TickStats(last_finished_mono=clock.monotonic())
    stats = TickStats(running=True, last_started=clock.now(), thread=threading.get_ident())
    daemon.scheduler.stats["probe"] = stats
    return daemon, stats


def _control_ticked(daemon: Daemon, clock: FakeClock) -> None:
    assert daemon.scheduler is not None
    daemon.scheduler.stats["control"].last_finished_mono = clock.monotonic()


def test_a_long_tick_that_advances_is_not_stuck() -> None:
    clock = FakeClock()
    daemon, _ = _long_tick(clock)
    daemon.progress.begin("probing", 300, "keys")
    for _ in range(10):  # 100 s in all, past the 60 s deadline, advancing every 10 s
        clock.advance(10)
        daemon.progress.advance("probing", 1)
    _control_ticked(daemon, clock)
    assert daemon.healthy() == (True, "ok") and not daemon._work_stuck()
    ok, doc = daemon.health()
    running = doc["running"]["probe"]
    assert ok and running["running_seconds"] == 100 and running["seconds_without_progress"] == 0
    assert running["progress"]["task"] == "probing" and running["progress"]["done"] == 10
    assert running["progress"]["total"] == 300
    clock.advance(61)  # then it stops advancing: stuck, judged from the last progress
    _control_ticked(daemon, clock)
    ok, why = daemon.healthy()
    assert not ok and why == "stage probe without progress for 61s (running for 161s, deadline 60s)"
    assert daemon._work_stuck()


def test_progress_of_another_thread_does_not_count() -> None:
    clock = FakeClock()
    daemon, _ = _long_tick(clock)
    other = threading.Thread(target=lambda: daemon.progress.begin("scanning", 10, "files"))
    clock.advance(61)
    other.start()  # the mail thread, say: advancing, but not the probe tick
    other.join()
    clock.advance(1)
    _control_ticked(daemon, clock)
    assert not daemon.healthy()[0] and daemon._work_stuck()


def test_health_shows_chunked_rounds() -> None:
    clock = FakeClock()
    daemon, _ = _long_tick(clock)
    start = clock.now()
    daemon.rounds.chunk_done(
        "probe", ProbeReport(at=start, results=[_ok()] * 5, more=True, remaining=7), start
    )
    clock.advance(3)
    daemon.rounds.chunk_done(
        "probe", ProbeReport(at=start, results=[_ok()] * 5, more=True, remaining=2), start
    )
    _control_ticked(daemon, clock)
    round_ = daemon.health()[1]["rounds"]["probe"]
    assert round_ == {
        "started": isoformat_z(start),
        "chunks_done": 2,
        "done": 10,
        "remaining": 2,
        "finished": None,
    }
    clock.advance(1)
    daemon.rounds.chunk_done("probe", ProbeReport(at=start, results=[_ok()] * 2), clock.now())
    round_ = daemon.health()[1]["rounds"]["probe"]
    assert round_["chunks_done"] == 3 and round_["done"] == 12 and round_["remaining"] == 0
    assert round_["finished"] == isoformat_z(clock.now())
    daemon.rounds.chunk_done("probe", ProbeReport(at=start, results=[_ok()]), clock.now())
    assert daemon.health()[1]["rounds"]["probe"]["chunks_done"] == 3  # a one-chunk round is no round


def _ok() -> ProbeResult:
    return ProbeResult(key_id="1", principal="svc", kind="key", outcome=ProbeOutcome.OK, at=FakeClock().now())


def test_health_shows_an_evaluation_round_by_keys() -> None:
    """Every key due: the evaluate tick runs in chunks (one batch of
    principals each), counted in keys evaluated."""
    clock = FakeClock()
    daemon, _ = _long_tick(clock)
    start = clock.now()
    daemon.rounds.chunk_done("evaluate", EvaluationReport(keys=2000, more=True, remaining=3000), start)
    daemon.rounds.chunk_done("evaluate", EvaluationReport(keys=2000, more=True, remaining=1000), start)
    round_ = daemon.health()[1]["rounds"]["evaluate"]
    assert (round_["chunks_done"], round_["done"], round_["remaining"]) == (2, 4000, 1000)
    daemon.rounds.chunk_done("evaluate", EvaluationReport(keys=1000, remaining=0), start)
    round_ = daemon.health()[1]["rounds"]["evaluate"]
    assert round_["done"] == 5000 and round_["finished"] is not None


def test_the_daemons_evaluate_tick_is_the_chunked_one() -> None:
    config = Config()
    services = Services(config=config, engine=None, clock=FakeClock())  # type: ignore[arg-type]
    by_name = {s.name: s for s in stages.daemon_stages(services)}
    assert by_name["evaluate"].run is stages.evaluate_chunk
    assert {s.name: s for s in stages.cycle_stages(services)}["evaluate"].run is stages.evaluate


class CountingDaemon(Daemon):
    """Counts the first scan's progress checks (one per extension period)."""

    checks = 0

    def _scan_mark(self, worker: threading.Thread) -> tuple[object, ...]:
        self.checks += 1
        return super()._scan_mark(worker)


def test_the_start_timeout_is_extended_only_while_the_first_scan_advances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'keyd.db'}"
    upgrade(url)
    extensions: list[tuple[float, str | None]] = []
    extended = threading.Event()

    def extend(seconds: float, status: str | None = None) -> bool:
        extensions.append((seconds, status))
        extended.set()
        return True

    monkeypatch.setattr(sdnotify, "extend_timeout", extend)
    seen: dict[str, int] = {}

    def scan(_: Services) -> None:
        while daemon.checks < 1:  # the supervisor has taken its starting mark
            threading.Event().wait(0.01)
        progress.begin("reading keys", 3, "files")
        for _n in range(3):
            extended.clear()
            progress.advance("reading keys")
            assert extended.wait(10)  # the next check saw this advance
        stuck_from, checks = len(extensions), daemon.checks
        while daemon.checks < checks + 5:  # five checks with no progress at all
            threading.Event().wait(0.01)
        seen.update(stuck=len(extensions) - stuck_from)
        healthy, health = daemon.health()  # /healthz before READY: the first scan, not "not ticked"
        seen.update(healthy=healthy, done=health["running"]["first_scan"]["progress"]["done"])
        assert health["reason"] == "first scan in progress"
        progress.end("reading keys")

    daemon = CountingDaemon(
        lambda: Config(database=DatabaseConfig(url=url)),
        SystemClock(),
        lambda s: [Stage("scan", scan)],
        DaemonSettings(control_interval=0.2, stop_timeout=5),
    )
    daemon.start_extension_every = 0.02
    daemon.start_extension = 60.0

    def stop_when_ready() -> None:
        while daemon.scheduler is None or not daemon.scheduler.running:
            threading.Event().wait(0.01)
        daemon.request_stop()

    threading.Thread(target=stop_when_ready, daemon=True).start()
    assert daemon.run() == 0
    assert seen == {
        "stuck": 0,
        "healthy": True,
        "done": 3,
    }  # a stuck first scan would still hit TimeoutStartSec
    assert len(extensions) >= 3
    assert all(seconds == 60.0 for seconds, _ in extensions)
    assert "first scan: reading keys: 3 of 3 files" in [status for _, status in extensions]
