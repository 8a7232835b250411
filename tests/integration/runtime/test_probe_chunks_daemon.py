"""A probe round in chunks, seen from outside a real ``keyd run``: the
round is split, the watchdog keeps being pinged while it runs, ``/healthz``
shows it advancing chunk by chunk, and every key is probed exactly once.

Thirty keys, ``issuer.rate_limit = 5`` and ``daemon.probe_slice = "1s"``
(one worker): chunks of five keys, each its own tick. Every wait is
bounded and waits for a condition; nothing is timed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyd.store.migrate import upgrade
from tests.support.daemon import Notifications, free_port, start_keyd, stop, write_config
from tests.support.issuer import IssuerServer
from tests.support.keys import make_key_file

KEYS = 30
CHUNK = 5  # rate_limit 5/s x probe_slice 1 s (concurrency 1)


@dataclass
class Timeline:
    """What an operator's monitoring would see, in the order it saw it:
    each /healthz body, and the watchdog pings that arrived before it."""

    health: list[dict[str, Any]] = field(default_factory=list)
    pings_before: list[int] = field(default_factory=list)

    def probe_round(self, i: int) -> dict[str, Any] | None:
        rounds: dict[str, Any] = self.health[i].get("rounds", {})
        return rounds.get("probe")

    def in_progress(self) -> list[int]:
        """Observations taken while the probe round was still running."""
        return [
            i
            for i, _ in enumerate(self.health)
            if (r := self.probe_round(i)) is not None and r["finished"] is None
        ]


@pytest.fixture
def daemon(tmp_path: Path, issuer: IssuerServer) -> Iterator[tuple[Notifications, int, list[str]]]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    expires = datetime.now(UTC) + timedelta(days=200)
    made = [make_key_file(keys, expires_at=expires, register_with=issuer) for _ in range(KEYS)]
    db = tmp_path / "keyd.db"
    upgrade(f"sqlite:///{db}")
    port = free_port()
    config = write_config(
        tmp_path / "keyd.toml",
        db_url=f"sqlite:///{db}",
        keys=keys,
        issuer_url=issuer.url,
        issuer_extra='concurrency = 1\nrate_limit = 5.0\nprobe_interval = "1d"\n',
        http_port=port,
        extra='[daemon]\nprobe_slice = "1s"\nprobe_tick = "1s"\n',
    )
    notes = Notifications(tmp_path / "notify.sock")
    proc = start_keyd(config, notes, tmp_path / "keyd.log")
    try:
        notes.wait_for("READY=1", timeout=60)
        yield notes, port, [m.key_id for m in made]
    finally:
        stop(proc)
        notes.close()
        log = (tmp_path / "keyd.log").read_text()
        assert "Traceback" not in log and "PRIVATE KEY" not in log, log


def watch_round(notes: Notifications, port: int, bound: float = 120) -> Timeline:
    """Poll /healthz (draining the notify socket before each poll) until the
    probe round is reported finished, at most ``bound`` seconds."""
    timeline = Timeline()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

        def finished() -> bool:
            timeline.pings_before.append(sum(m.startswith("WATCHDOG=1") for m in notes.drain()))
            response = http.get("/healthz")
            assert response.status_code == 200, response.text
            timeline.health.append(response.json())
            probe = timeline.probe_round(len(timeline.health) - 1)
            return probe is not None and probe["finished"] is not None

        wait_for(finished, bound)
    return timeline


def wait_for(condition: Any, bound: float) -> None:
    import time

    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached within {bound}s"
        time.sleep(0.1)


@pytest.mark.slow
def test_probe_round_runs_in_chunks_with_watchdog_and_progress(
    daemon: tuple[Notifications, int, list[str]], issuer: IssuerServer
) -> None:
    notes, port, key_ids = daemon
    timeline = watch_round(notes, port)

    final = timeline.probe_round(len(timeline.health) - 1)
    assert final is not None
    assert final["chunks_done"] == KEYS // CHUNK and final["done"] == KEYS and final["remaining"] == 0

    running = timeline.in_progress()
    assert running, timeline.health  # the round was seen in progress
    seen_chunks = [timeline.probe_round(i)["chunks_done"] for i in running]  # type: ignore[index]
    assert seen_chunks == sorted(seen_chunks) and len(set(seen_chunks)) >= 2, seen_chunks
    remaining = [timeline.probe_round(i)["remaining"] for i in running]  # type: ignore[index]
    assert remaining == sorted(remaining, reverse=True) and all(0 < r < KEYS for r in remaining)

    # watchdog pings kept arriving between two in-progress observations
    first, last = running[0], running[-1]
    assert sum(timeline.pings_before[first + 1 : last + 1]) >= 1, timeline.pings_before

    # a chunk in flight is shown with its own progress
    chunks = [h["running"]["probe"]["progress"] for h in timeline.health if "probe" in h["running"]]
    assert any(p is not None and p["task"] == "probing" and p["total"] == CHUNK for p in chunks), chunks

    # every key probed exactly once in the round (one token each at the issuer)
    assert {k: issuer.tokens_by_key[k] for k in key_ids} == {k: 1 for k in key_ids}
