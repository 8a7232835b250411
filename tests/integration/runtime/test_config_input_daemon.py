"""The real ``keyd run`` and ``keyd config check`` with config input that
used to escape as a raw Python error. A SIGHUP with a duration past
``timedelta``'s range used to raise OverflowError out of the reload and
kill the daemon (under systemd: a crash loop); now the reload is rejected
and the running configuration stays. An HTTP listener off loopback is
warned about in the daemon's log and by ``keyd config check``."""

from __future__ import annotations

import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.store.migrate import upgrade
from tests.integration.runtime.test_daemon import config_text
from tests.support.daemon import KEYD, Notifications, free_port, start_keyd, stop
from tests.support.keys import make_key_file

NOW = datetime.now(UTC)
TOKEN = "0123456789abcdef0123456789abcdef"


def _config(tmp_path: Path, thresholds: str, listen: str) -> Path:
    """test_daemon's config, listening on ``listen`` with a token file."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    token = tmp_path / "http-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = tmp_path / "keyd.toml"
    text = config_text(tmp_path / "keyd.db", keys, 0, thresholds)
    config.write_text(
        text.replace('listen = "127.0.0.1:0"', f'listen = "{listen}"\nauth_token_file = "{token}"')
    )
    return config


@pytest.mark.slow
def test_sighup_with_an_out_of_range_duration_keeps_the_old_config(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, '["30d", "7d"]', f"0.0.0.0:{port}")
    upgrade(f"sqlite:///{tmp_path / 'keyd.db'}")
    make_key_file(tmp_path / "keys", key_id="100", user_id="svc-a", expires_at=NOW + timedelta(days=200))
    notes = Notifications(tmp_path / "notify.sock")
    log = tmp_path / "keyd.log"
    proc = start_keyd(config, notes, log)
    try:
        notes.wait_for("READY=1")
        good = config.read_text()
        config.write_text(good.replace('["30d", "7d"]', '["30d", "1000000000d"]'))
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("RELOADING=1")
        notes.wait_for("READY=1")
        text = log.read_text()
        assert "reload rejected, keeping the running configuration" in text
        assert "alerts.thresholds[1]: '1000000000d' is longer than 36525 days" in text
        assert proc.poll() is None  # still running

        make_key_file(tmp_path / "keys", key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=3))
        config.write_text(good)
        proc.send_signal(signal.SIGHUP)
        notes.wait_for("RELOADING=1")
        assert "leader: 2 keys, 1 expiring" in notes.wait_for("READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=25) == 0
    finally:
        stop(proc)
        notes.close()
    text = log.read_text()
    assert "Traceback" not in text and "OverflowError" not in text
    # logged (JSON-quoted in the log line) at start and at each reload
    assert f'http.listen: \\"0.0.0.0:{port}\\" is not a loopback address' in text


def test_config_check_warns_about_a_listener_off_loopback(tmp_path: Path) -> None:
    config = _config(tmp_path, '["7d"]', "0.0.0.0:9464")
    done = subprocess.run(
        [*KEYD, "--config", str(config), "config", "check"], capture_output=True, text=True, timeout=60
    )
    assert f'warning: {config}: http.listen: "0.0.0.0:9464" is not a loopback address' in (done.stdout)
    loopback = _config(tmp_path, '["7d"]', "127.0.0.1:9464")
    done = subprocess.run(
        [*KEYD, "--config", str(loopback), "config", "check"], capture_output=True, text=True, timeout=60
    )
    assert "loopback" not in done.stdout + done.stderr
