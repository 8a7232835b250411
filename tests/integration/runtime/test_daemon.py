"""``keyd run`` as systemd runs it: a real process, a real notify socket,
signals. READY/STATUS/WATCHDOG, the HTTP endpoints, the SQLite lock, a
rejected and an accepted SIGHUP reload, and a clean SIGTERM stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from keyd.store.migrate import upgrade
from tests.support.daemon import KEYD, Notifications, free_port
from tests.support.daemon import start_keyd as start
from tests.support.db import postgres_database
from tests.support.keys import make_key_file

NOW = datetime.now(UTC)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, int, Notifications]]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    db = tmp_path / "keyd.db"
    upgrade(f"sqlite:///{db}")
    make_key_file(keys, key_id="100", user_id="svc-a", expires_at=NOW + timedelta(days=200))
    port = free_port()
    config = tmp_path / "keyd.toml"
    config.write_text(config_text(db, keys, port))
    notes = Notifications(tmp_path / "notify.sock")
    yield config, keys, port, notes
    notes.close()


def config_text(db: Path, keys: Path, port: int, thresholds: str = '["30d", "7d"]') -> str:
    return f"""
[database]
url = "sqlite:///{db}"
[[sources]]
type = "directory"
path = "{keys}"
[alerts]
thresholds = {thresholds}
[http]
listen = "127.0.0.1:{port}"
[log]
level = "INFO"
"""


@pytest.mark.slow
def test_daemon_lifecycle(setup: tuple[Path, Path, int, Notifications], tmp_path: Path) -> None:
    config, keys, port, notes = setup
    log = tmp_path / "keyd.log"
    proc = start(config, notes, log)
    try:
        ready = notes.wait_for("READY=1")
        assert "STATUS=leader: 1 keys, 0 expiring, 0 expired, 0 rejected, 0 invalid (ok)" in ready
        notes.wait_for("WATCHDOG=1", timeout=5)  # pinged from the control tick

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").json() == {"role": "leader"}
            metrics = http.get("/metrics").text
            assert 'keyd_key_status_code{key_id="100",principal="svc-a"} 0.0' in metrics
            assert "keyd_leader 1.0" in metrics

        second = subprocess.run(
            [*KEYD, "--config", str(config), "run"],
            capture_output=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )
        assert second.returncode == 4
        assert f"another keyd owns {tmp_path.resolve() / 'keyd.db'} (pid {proc.pid})" in (
            second.stderr.decode()
        )

        good = config.read_text()
        config.write_text(good.replace('thresholds = ["30d", "7d"]', 'thresholds = ["7x"]'))
        proc.send_signal(signal.SIGHUP)
        assert notes.wait_for("RELOADING=1").split("\n")[1].startswith("MONOTONIC_USEC=")
        notes.wait_for("READY=1")
        assert "reload rejected, keeping the running configuration" in log.read_text()

        make_key_file(keys, key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=3))
        config.write_text(good)
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("RELOADING=1")
        ready = notes.wait_for("READY=1")
        assert "leader: 2 keys, 1 expiring" in ready  # re-scanned after the reload

        proc.send_signal(signal.SIGTERM)
        notes.wait_for("STOPPING=1")
        assert proc.wait(timeout=25) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "PRIVATE KEY" not in text


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_standby_takes_over_when_the_leader_dies(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    make_key_file(keys, key_id="100", user_id="svc-a", expires_at=NOW + timedelta(days=200))
    with postgres_database() as url:
        upgrade(url)
        procs: list[subprocess.Popen[bytes]] = []
        notes: list[Notifications] = []
        ports: list[int] = []
        try:
            for name in ("a", "b"):
                ports.append(free_port())
                config = tmp_path / f"{name}.toml"
                config.write_text(
                    config_text(tmp_path / "unused.db", keys, ports[-1]).replace(
                        f'url = "sqlite:///{tmp_path / "unused.db"}"', f'url = "{url}"'
                    )
                )
                notes.append(Notifications(tmp_path / f"{name}.sock"))
                procs.append(start(config, notes[-1], tmp_path / f"{name}.log"))
                ready = notes[-1].wait_for("READY=1")
                assert ("STATUS=leader" if name == "a" else "STATUS=standby") in ready, ready
            with httpx.Client(timeout=5) as http:
                assert http.get(f"http://127.0.0.1:{ports[1]}/readyz").json() == {"role": "standby"}
                assert "keyd_leader 0.0" in http.get(f"http://127.0.0.1:{ports[1]}/metrics").text

                procs[0].kill()  # the leader dies without a goodbye: its connection drops
                procs[0].wait(timeout=10)
                started = time.monotonic()
                notes[1].wait_for("STATUS=leader", timeout=15)
                assert time.monotonic() - started < 10  # "within seconds"
                assert http.get(f"http://127.0.0.1:{ports[1]}/readyz").json() == {"role": "leader"}
            procs[1].send_signal(signal.SIGTERM)
            assert procs[1].wait(timeout=25) == 0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for note in notes:
                note.close()
    assert "role changed: standby -> leader" in (tmp_path / "b.log").read_text()
