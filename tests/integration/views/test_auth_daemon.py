"""The real ``keyd run`` on a non-loopback address with a token: every
path but health needs it; a SIGHUP can open /metrics for scrapers; and
without a token the same address is refused at start (exit 4)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from keyd.store.migrate import upgrade
from tests.support.daemon import KEYD, Notifications, free_port, start_keyd, stop, wait_until
from tests.support.keyfiles import write_keyfile

pytestmark = pytest.mark.slow
TOKEN = "d6c1f0a8f2b54c1e9a7e3b5d4c2a1f00"


def config_text(tmp_path: Path, port: int, http_extra: str) -> str:
    db = tmp_path / "keyd.db"
    return (
        f'[database]\nurl = "sqlite:///{db}"\n[[sources]]\ntype = "directory"\n'
        f'path = "{tmp_path / "keys"}"\n[http]\nlisten = "0.0.0.0:{port}"\n{http_extra}'
    )


def test_token_guards_every_path(tmp_path: Path) -> None:
    write_keyfile(tmp_path / "keys" / "a.json", "key-a", "svc-a")
    upgrade(f"sqlite:///{tmp_path / 'keyd.db'}")
    token = tmp_path / "http-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    config = tmp_path / "keyd.toml"
    config.write_text(config_text(tmp_path, port, f'auth_token_file = "{token}"\n'))
    notes = Notifications(tmp_path / "notify.sock")
    proc = start_keyd(config, notes, tmp_path / "keyd.log")
    try:
        notes.wait_for("READY=1", timeout=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for path in ("/", "/api/v1/status", "/keys/key-a", "/metrics"):
                assert http.get(path).status_code == 401, path
                ok = http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert ok.status_code == 200, path
            assert http.get("/healthz").status_code == 200
            config.write_text(
                config_text(tmp_path, port, f'auth_token_file = "{token}"\nmetrics_public = true\n')
            )
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: http.get("/metrics").status_code == 200, what="/metrics open")
            assert http.get("/").status_code == 401
    finally:
        stop(proc)
        notes.close()
    assert TOKEN not in (tmp_path / "keyd.log").read_text()


def test_off_loopback_without_token_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "keyd.toml"
    (tmp_path / "keys").mkdir()
    config.write_text(config_text(tmp_path, free_port(), ""))
    done = subprocess.run([*KEYD, "--config", str(config), "run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 4
    assert "http.listen" in done.stderr and "auth_token_file" in done.stderr
