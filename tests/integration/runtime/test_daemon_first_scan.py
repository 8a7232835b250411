"""A long first scan under systemd's start timeout, through a real ``keyd run``.

The scan is made long deterministically, not by volume: a wrapper slows
every progress step of the scan (``keyd.progress.advance``) and shortens
the daemon's extension period (``Daemon.start_extension_every``), so an
``EXTEND_TIMEOUT_USEC`` is seen before ``READY=1``, and a SIGTERM lands
while the first scan is still running.
"""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.store.migrate import upgrade
from tests.support.daemon import Notifications, start_keyd, stop, write_config
from tests.support.keys import make_key_file

FILES = 30

WRAPPER = """
import sys, time
import keyd.progress
from keyd.runtime.daemon import Daemon

Daemon.start_extension_every = 0.05
Daemon.first_scan_stop_wait = 1.0
_advance = keyd.progress.advance

def slow_advance(task, n=1):
    time.sleep({delay})
    _advance(task, n)

keyd.progress.advance = slow_advance
from keyd.cli import main
sys.exit(main())
"""


def slowed(delay: float) -> list[str]:
    return [sys.executable, "-c", WRAPPER.format(delay=delay)]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    expires = datetime.now(UTC) + timedelta(days=200)
    for n in range(FILES):
        make_key_file(keys, key_id=f"{n + 1000}", user_id=f"svc-{n}", expires_at=expires, alg="ES256")
    db = tmp_path / "keyd.db"
    upgrade(f"sqlite:///{db}")
    return write_config(
        tmp_path / "keyd.toml", db_url=f"sqlite:///{db}", keys=keys, extra='[log]\nlevel = "INFO"\n'
    )


@pytest.mark.slow
def test_a_progressing_first_scan_extends_the_start_timeout(config: Path, tmp_path: Path) -> None:
    notes = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "keyd.log"
    proc = start_keyd(config, notes, log, command=slowed(0.1))
    try:
        extend = notes.wait_for("EXTEND_TIMEOUT_USEC=", timeout=60)
        assert extend.split("\n")[0] == "EXTEND_TIMEOUT_USEC=90000000"
        assert "STATUS=first scan: " in extend
        ready = notes.wait_for("READY=1", timeout=120)
        assert f"leader: {FILES} keys" in ready
        assert not [m for m in notes.seen if m.startswith("READY=1")][:-1]  # READY only after the scan
        assert any(f" of {FILES} files" in m for m in notes.seen if m.startswith("EXTEND_TIMEOUT_USEC="))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
        notes.close()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_sigterm_during_the_first_scan_stops_and_a_restart_completes(config: Path, tmp_path: Path) -> None:
    notes = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "keyd.log"
    proc = start_keyd(config, notes, log, command=slowed(5.0))  # 30 files: 150 s of scan
    try:
        notes.wait_for("EXTEND_TIMEOUT_USEC=", timeout=60)  # the scan has begun and advances
        proc.send_signal(signal.SIGTERM)
        notes.wait_for("STOPPING=1", timeout=30)
        assert proc.wait(timeout=30) == 0
        assert not any(m.startswith("READY=1") for m in notes.seen + notes.drain())
    finally:
        stop(proc)
    text = log.read_text()
    assert "received SIGTERM during the first scan: stopping" in text
    assert "Traceback" not in text

    again = start_keyd(config, notes, tmp_path / "again.log")
    try:
        ready = notes.wait_for("READY=1", timeout=120)
        assert f"leader: {FILES} keys" in ready
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    finally:
        stop(again)
        notes.close()
