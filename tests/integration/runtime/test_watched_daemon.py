"""A real ``keyd run`` with a watched directory source: a key file dropped
in is in the inventory after a *partial* scan (``/healthz`` and the log say
so), no further full walk runs before ``daemon.full_scan_interval``, and a
SIGHUP starts the watchers afresh with a full scan."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from keyd.store.migrate import upgrade
from keyd.store.models import KeyLocation
from tests.support.daemon import Notifications, free_port, start_keyd, stop, wait_until, write_config
from tests.support.keys import make_key_file

NOW = datetime.now(UTC)


@pytest.fixture
def notes(tmp_path: Path) -> Iterator[Notifications]:
    notes = Notifications(tmp_path / "notify.sock")
    yield notes
    notes.close()


@pytest.mark.slow
def test_a_dropped_key_file_is_found_by_a_partial_scan(
    tmp_path: Path, db_url: str, notes: Notifications
) -> None:
    keys = tmp_path / "keys"
    (keys / "team0").mkdir(parents=True, mode=0o700)
    keys.chmod(0o700)
    make_key_file(keys / "team0", key_id="100", user_id="svc-a", expires_at=NOW + timedelta(days=200))
    upgrade(db_url)
    port = free_port()
    config = write_config(
        tmp_path / "keyd.toml",
        db_url=db_url,
        keys=keys,
        http_port=port,
        extra='[daemon]\nscan_interval = "1s"\nfull_scan_interval = "1h"\ncontrol_interval = "1s"\n',
    )
    log = tmp_path / "keyd.log"
    proc = start_keyd(config, notes, log)
    engine = create_engine(db_url)
    try:
        notes.wait_for("READY=1")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            def watch() -> Any:
                return http.get("/healthz").json()["watch"]

            wait_until(lambda: watch() and watch()["ticks"]["watched"]["runs"] >= 2, what="watched ticks")
            source = next(iter(watch()["sources"].values()))
            assert source["watching"] == 2 and source["unwatched_because"] is None

            make_key_file(keys / "team0", key_id="200", user_id="svc-b", expires_at=NOW + timedelta(days=90))

            def present() -> bool:
                with Session(engine) as session:
                    ref = str(keys / "team0" / "200.json")
                    return (
                        session.scalar(select(KeyLocation.status).where(KeyLocation.ref == ref)) == "present"
                    )

            wait_until(present, what="the new key file in the inventory")
            wait_until(lambda: watch()["ticks"]["partial"]["runs"] >= 1, what="a partial tick")
            ticks = watch()["ticks"]
            assert ticks["full"]["runs"] == 1  # the first scan only: full_scan_interval is 1 h
            assert "1 directory rescanned" in log.read_text()
            assert "full scan: first scan" in log.read_text()

            proc.send_signal(signal.SIGHUP)  # new services, new watchers: a full scan
            wait_until(
                lambda: log.read_text().count("full scan: first scan") == 2, what="a full scan after reload"
            )
            wait_until(lambda: watch()["ticks"]["watched"]["runs"] >= 1, what="watched again")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
        engine.dispose()
