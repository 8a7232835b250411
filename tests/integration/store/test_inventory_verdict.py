"""The daemon's status line (``inventory_verdict``, after every scan) says
what judging every key would say, but reads only the keys that can count
beyond "keys": at 100,000 idle keys, reading them all was 8-16 s of CPU
every scan interval, most of the idle daemon's CPU."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, union
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.config import Config, DirectorySourceConfig
from keyd.runtime.check import inventory_verdict, judge, warn_within
from keyd.store import page, snapshot
from keyd.store.models import Key, KeyLocation
from keyd.vocab import KeyStatus

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
CONFIG = Config(sources=(DirectorySourceConfig(name="dir", path=Path("/k")),))
WARN = warn_within(CONFIG)

#: key id -> (status, expires_at); the first three are quiet (only counted)
KEYS: dict[str, tuple[str, datetime | None]] = {
    "q-far": ("active", NOW + WARN + timedelta(seconds=1)),
    "q-unknown": ("active", None),
    "q-never": ("active", datetime(9999, 12, 31, tzinfo=UTC)),
    "expiring": ("active", NOW + timedelta(days=5)),
    "expiring-edge": ("active", NOW + WARN),  # exactly the window: expiring
    "expired-by-date": ("active", NOW - timedelta(hours=1)),  # not re-derived yet
    "expired": ("expired", NOW - timedelta(days=2)),
    "rejected": ("rejected", NOW + timedelta(days=90)),
    "invalid": ("invalid", NOW + timedelta(days=90)),
    "missing": ("missing", NOW + timedelta(days=90)),
    "unheld": ("unheld", NOW + timedelta(days=90)),
}
QUIET = {"q-far", "q-unknown", "q-never"}


def _seed(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        for key_id, (status, expires_at) in KEYS.items():
            key = Key(
                key_id=key_id,
                kind="serviceaccount",
                principal=f"user-{key_id}",
                algorithm="RS256",
                fingerprint="f" * 64,
                content_hash="c" * 64,
                status=status,
                expires_at=expires_at,
                last_error="issuer said no" if status in ("rejected", "invalid") else None,
                first_seen=NOW,
                last_seen=NOW,
                updated_at=NOW,
                probe_failures=0,
            )
            s.add(key)
            s.flush()
            s.add(
                KeyLocation(
                    source="dir",
                    ref=f"/k/{key_id}.json",
                    key_pk=key.id,
                    status="missing" if status == "missing" else "present",
                    first_seen=NOW,
                    last_seen=NOW,
                )
            )


def test_status_line_verdict_equals_judging_every_key(
    migrated_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(migrated_engine)
    full = judge(
        CONFIG,
        NOW,
        snapshot.keys(migrated_engine),
        snapshot.location_problems(migrated_engine),
        snapshot.sources(migrated_engine),
    )
    read: list[str] = []
    record = snapshot.key_record

    def counted(row: Any, locations: Any) -> Any:
        read.append(row.key_id)
        return record(row, locations)

    monkeypatch.setattr(snapshot, "key_record", counted)
    quick = inventory_verdict(CONFIG, migrated_engine, NOW)
    assert sorted(read) == sorted(set(KEYS) - QUIET)  # the quiet ones are counted, not read
    assert quick.counts == full.counts
    assert quick.status == full.status == "critical"
    assert [p.message for p in quick.problems] == [p.message for p in full.problems]
    assert (quick.counts["keys"], quick.counts["expiring"], quick.counts["expired"]) == (9, 2, 2)


def test_an_idle_inventory_reads_no_key(migrated_engine: Engine) -> None:
    """Every key active and far from expiry: one count, no key record."""
    _seed(migrated_engine)
    with Session(migrated_engine) as s, s.begin():
        for key in s.query(Key):
            key.status, key.expires_at = "active", NOW + timedelta(days=400)
    assert snapshot.quiet_keys(migrated_engine, NOW + WARN) == len(KEYS)
    assert list(snapshot.keys(migrated_engine, unless_quiet_after=NOW + WARN)) == []
    verdict = inventory_verdict(CONFIG, migrated_engine, NOW)
    assert verdict.status == "ok" and verdict.counts["keys"] == len(KEYS)


def test_quiet_and_not_quiet_split_every_key(migrated_engine: Engine) -> None:
    """One rule, two readers: ``quiet`` (what the status line counts) and
    ``not_quiet`` (what the status page and ``keyd status`` read, through
    ``page.attention``) split the inventory with no key in both or in
    neither, for every status and every side of the window's end."""
    _seed(migrated_engine)
    bound = NOW + WARN
    others = [s for s in KeyStatus if s != KeyStatus.ACTIVE]
    with Session(migrated_engine) as s:
        ids = {pk: key_id for pk, key_id in s.execute(select(Key.id, Key.key_id))}
        quiet = {ids[pk] for pk in s.scalars(select(Key.id).where(snapshot.quiet(bound)))}
        loud = {ids[pk] for pk in s.scalars(union(*snapshot.not_quiet(bound, others)))}
    assert quiet == QUIET
    assert loud == set(KEYS) - QUIET
    attention = {k.key_id for k in page.attention(migrated_engine, NOW, WARN)}
    assert attention == loud - {"missing"}  # missing keys are only counted
    with pytest.raises(ValueError):
        snapshot.not_quiet(bound, [KeyStatus.ACTIVE])
