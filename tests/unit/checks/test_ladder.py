"""keyd.checks.ladder: one alert per rung, never early, no burst."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyd.checks.ladder import due_rungs, ladder, rung_expiry, threshold_label

EXP = datetime(2027, 1, 1, tzinfo=UTC)
DEFAULT = tuple(timedelta(days=d) for d in (30, 14, 7, 3, 1))
D = timedelta(days=1)


def test_ladder_rungs_carry_the_expiry() -> None:
    rungs = ladder(EXP, DEFAULT)
    assert [(r.label, r.expires_at) for r in rungs] == [
        ("30d", EXP),
        ("14d", EXP),
        ("7d", EXP),
        ("3d", EXP),
        ("1d", EXP),
        ("expired", EXP),
    ]
    assert [r.severity for r in rungs] == ["info", "warning", "warning", "critical", "critical", "critical"]
    assert rungs[-1].due_at == EXP and rungs[-1].kind == "expired"


def test_never_expires_has_no_ladder() -> None:
    assert ladder(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), DEFAULT) == []


@pytest.mark.parametrize(
    ("before", "label"),
    [
        (timedelta(days=30), "30d"),
        (timedelta(hours=12), "12h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=45), "45s"),
        (timedelta(hours=48), "2d"),
    ],
)
def test_labels(before: timedelta, label: str) -> None:
    assert threshold_label(before) == label


@pytest.mark.parametrize(
    ("now", "fired", "expected"),
    [
        (EXP - 31 * D, set(), None),
        (EXP - 30 * D, set(), "30d"),  # due exactly at its instant
        (EXP - 20 * D, {"30d"}, None),
        (EXP - 5 * D, set(), "7d"),  # first seen inside 7 days: one alert, no burst
        (EXP - 5 * D, {"7d"}, None),
        (EXP - 2 * D, {"7d"}, "3d"),  # later rungs still fire at their time
        (EXP - timedelta(microseconds=1), {"1d"}, None),
        (EXP, {"1d"}, "expired"),  # dead at the instant itself
        (EXP + 100 * D, {"expired"}, None),
    ],
)
def test_due_rungs(now: datetime, fired: set[str], expected: str | None) -> None:
    rung = due_rungs(EXP, DEFAULT, now, fired)
    assert (rung.label if rung else None) == expected


def test_rungs_belong_to_the_expiry_in_whole_seconds_utc() -> None:
    """Expiries a fraction of a second apart share one ladder (as when the
    instant was part of the rung's name, ``7d@2027-01-01T00:00:00Z``)."""
    fractional = datetime(2027, 1, 1, 1, 0, 0, 900_000, tzinfo=timezone(timedelta(hours=1)))
    assert {r.expires_at for r in ladder(fractional, DEFAULT)} == {EXP}
    assert rung_expiry(fractional) == EXP and rung_expiry(fractional).utcoffset() == timedelta(0)


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(-40 * 86_400, 5 * 86_400), min_size=1, max_size=40),
    thresholds=st.lists(st.integers(1, 60 * 86_400), min_size=0, max_size=6),
)
def test_each_rung_fires_at_most_once_and_never_early(offsets: list[int], thresholds: list[int]) -> None:
    ths = [timedelta(seconds=t) for t in thresholds]
    fired: dict[str, datetime] = {}
    for offset in offsets:  # any order of scan times, also backwards
        now = EXP + timedelta(seconds=offset)
        rung = due_rungs(EXP, ths, now, set(fired))
        if rung is not None:
            assert rung.label not in fired
            assert rung.due_at <= now
            fired[rung.label] = now
    ordered = sorted(fired.items(), key=lambda kv: kv[1])
    dues = {r.label: r.due_at for r in ladder(EXP, ths)}
    assert all(dues[t] <= at for t, at in ordered)
