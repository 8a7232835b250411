"""The daemon in-process with fake stages: start-up refusals, catch-up,
reload rules, health, and a stop that restores signal handlers."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from keyd.cli import main
from keyd.clock import FakeClock, SystemClock
from keyd.config import Config, DatabaseConfig
from keyd.inventory.leader import FileLeaderGuard
from keyd.runtime.cycle import Stage
from keyd.runtime.daemon import Daemon, DaemonSettings
from keyd.runtime.scheduler import TickScheduler, TickStats
from keyd.runtime.wiring import Services
from keyd.store.migrate import upgrade


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
    assert not ok and why == "stage probe running for 61s (deadline 60s)"
    assert daemon._work_stuck()  # and the watchdog pings stop
