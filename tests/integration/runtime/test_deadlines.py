"""A slow issuer never blinds keyd: every request has a total deadline
(connect + send + whole answer), and mail has its own thread in the
daemon. Reproduces the measured failures: a dripping issuer held one
probe for 158 s with ``timeout = "10s"``, and an already decided expiry
alert waited behind it. No wall-clock targets: each test asserts an
*order* (keyd gave up / mailed while the issuer was still dripping), and
every wait is bounded by a multiple of the configured deadline."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyd.clients.issuer import IssuerClient
from keyd.clock import SystemClock
from keyd.errors import IssuerUnavailable
from keyd.store.migrate import upgrade
from tests.support.daemon import (
    KEYD,
    Notifications,
    start_keyd,
    stop,
    wait_until,
    write_config,
)
from tests.support.issuer import DISCOVERY_PATH, IssuerServer
from tests.support.keys import make_key_file
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [pytest.mark.issuer, pytest.mark.slow]
NOW = datetime.now(UTC)
DEADLINE = 2.0  # issuer.timeout in these tests (seconds)


def drip(issuer: IssuerServer, seconds: float = 0.5) -> None:
    """Every token request gets its real answer, one byte per ``seconds``:
    a few hundred bytes take minutes, far beyond ``DEADLINE``."""
    issuer.drip_seconds = seconds
    issuer.fail_mode = "drip"


def test_a_dripping_answer_is_cut_at_the_total_deadline(issuer: IssuerServer) -> None:
    issuer.fault_paths = {DISCOVERY_PATH}
    drip(issuer, seconds=0.2)  # a per-read timeout of 2 s is never tripped by this
    with IssuerClient(issuer.url, clock=SystemClock(), timeout=DEADLINE) as client:
        with pytest.raises(IssuerUnavailable, match=r"no complete answer within 2s"):
            client.discover()
        assert issuer.dripping == 1  # keyd gave up while the answer was still coming


def setup(tmp_path: Path, issuer: IssuerServer, days: list[int], **config: Any) -> Path:
    """Key files expiring in ``days``, a migrated SQLite database, keyd.toml."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for n, left in enumerate(days):
        make_key_file(
            keys,
            key_id=f"{100 + n}",
            user_id=f"svc-{n}",
            expires_at=NOW + timedelta(days=left),
            register_with=issuer,
        )
    url = f"sqlite:///{tmp_path / 'keyd.db'}"
    upgrade(url)
    return write_config(tmp_path / "keyd.toml", db_url=url, keys=keys, issuer_url=issuer.url, **config)


def test_check_with_a_dripping_issuer_ends_while_it_drips(tmp_path: Path, issuer: IssuerServer) -> None:
    config = setup(
        tmp_path, issuer, [200, 200, 200], issuer_extra=f'timeout = "{DEADLINE:g}s"\nconcurrency = 1\n'
    )
    drip(issuer)
    done = subprocess.run(
        [*KEYD, "--config", str(config), "check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3, done.stdout + done.stderr  # UNKNOWN: the issuer is unavailable
    assert "issuer unavailable" in done.stdout
    # keyd hung up on every dripping answer, never waited for one to end
    wait_until(lambda: issuer.dripping == 0, timeout=10, what="the issuer to notice")
    assert issuer.drips_abandoned >= 1 and issuer.drips_completed == 0


def test_a_decided_alert_is_mailed_while_a_probe_drips(
    tmp_path: Path,
    issuer: IssuerServer,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    # a long deadline: the probe round is still waiting when the mail must go out
    config = setup(
        tmp_path,
        issuer,
        [5],
        smtp=(smtp_server.host, smtp_server.port),
        issuer_extra='timeout = "60s"\n',
        fast_ticks=True,
    )
    drip(issuer)
    notes = Notifications(tmp_path / "notify.sock")
    proc = start_keyd(config, notes, tmp_path / "keyd.log")
    try:
        notes.wait_for("READY=1", timeout=30)
        wait_until(lambda: issuer.dripping >= 1, timeout=30, what="the probe to start")
        wait_until(lambda: len(smtp_server.inbox()) >= 1, timeout=40, what="the alert mail")
        assert issuer.dripping >= 1  # the probe is still waiting on the issuer
        assert "key 100 " in str(smtp_server.inbox()[0].message["Subject"])
    finally:
        stop(proc)
        notes.close()
