"""keyd.checks.expiry: table-driven cases and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyd.checks.expiry import days_left, evaluate, last_usable_day, seconds_until, time_left
from keyd.sources.keyfile import NEVER, Expiry

ZRH = ZoneInfo("Europe/Zurich")
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("expires_at", "at", "status", "seconds_left"),
    [
        (T0, T0 - timedelta(days=60), "valid", 60 * 86400),
        (T0, T0 - timedelta(days=30, seconds=1), "valid", 30 * 86400 + 1),
        (T0, T0 - timedelta(days=30), "expiring", 30 * 86400),  # boundary: warn_before inclusive
        (T0, T0 - timedelta(seconds=1), "expiring", 1),
        (T0, T0 - US, "expiring", 1),  # a microsecond left still counts as usable
        (T0, T0, "expired", 0),  # strict: at the instant itself the key is dead (§2)
        (T0, T0 + US, "expired", -1),
        (T0, T0 + timedelta(days=2), "expired", -2 * 86400),
    ],
)
def test_table(expires_at: datetime, at: datetime, status: str, seconds_left: int) -> None:
    view = evaluate(expires_at, at)
    assert view.status == status
    assert view.seconds_left == seconds_left
    assert view.expires_at == expires_at


def test_never_sentinel_has_no_countdown() -> None:
    view = evaluate(Expiry(NEVER), T0)
    assert (view.status, view.seconds_left, view.last_usable_day, view.days_left) == (
        "never",
        None,
        None,
        None,
    )
    assert view.expires_at == NEVER
    assert view.usable is True


def test_unknown_when_missing() -> None:
    for value in (None, Expiry(None)):
        view = evaluate(value, T0)
        assert view.status == "unknown"
        assert view.seconds_left is None and view.expires_at is None
        assert view.usable is None


def test_console_date_in_cet_last_usable_day() -> None:
    # "expires 2026-06-01" picked in Zurich (CEST, +02:00): dead from 2026-05-31T22:00Z
    dies = datetime(2026, 5, 31, 22, 0, tzinfo=UTC)
    view = evaluate(dies, dies - timedelta(hours=1), ZRH)
    assert view.last_usable_day == date(2026, 5, 31)
    assert evaluate(dies, dies, ZRH).status == "expired"
    assert last_usable_day(dies, UTC) == date(2026, 5, 31)


def test_last_usable_day_utc_midnight() -> None:
    assert last_usable_day(datetime(2027, 1, 1, tzinfo=UTC)) == date(2026, 12, 31)
    assert last_usable_day(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)) == date(2027, 1, 1)


def test_custom_warn_before() -> None:
    assert evaluate(T0, T0 - timedelta(days=10), warn_before=timedelta(days=7)).status == "valid"
    assert evaluate(T0, T0 - timedelta(days=7), warn_before=timedelta(days=7)).status == "expiring"


def test_days_left() -> None:
    assert days_left(None) is None
    assert days_left(86400 * 3 + 5) == 3
    assert days_left(1) == 0
    assert days_left(-1) == -1
    assert evaluate(T0, T0 - timedelta(days=3, hours=1)).days_left == 3


def test_naive_expiry_taken_as_utc_but_naive_at_refused() -> None:
    naive = datetime(2026, 6, 1)
    assert evaluate(naive, T0).status == "expired"
    with pytest.raises(ValueError):
        evaluate(T0, datetime(2026, 1, 1))


def test_offset_expiry_normalised() -> None:
    plus2 = datetime(2026, 6, 1, 2, 0, tzinfo=ZRH)  # == 2026-06-01T00:00Z
    view = evaluate(plus2, T0 - US)
    assert view.expires_at == T0 and view.expires_at.tzinfo == UTC
    assert view.status == "expiring"


instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from([UTC, ZRH, ZoneInfo("America/St_Johns"), ZoneInfo("Pacific/Kiritimati")])


@given(instants, instants, zones, st.integers(min_value=0, max_value=400))
def test_properties(expires_at: datetime, at: datetime, tz: ZoneInfo, warn_days: int) -> None:
    view = evaluate(expires_at, at, tz, timedelta(days=warn_days))
    assert view.seconds_left is not None and view.last_usable_day is not None
    # status, seconds_left and the strict rule always agree
    assert (view.status == "expired") == (at >= expires_at) == (view.seconds_left <= 0)
    assert (view.days_left is not None and view.days_left < 0) <= (view.status == "expired")
    if view.status == "expiring":
        assert expires_at - at <= timedelta(days=warn_days)
    if view.status == "valid":
        assert expires_at - at > timedelta(days=warn_days)
    # the last usable day is the local day of the last usable microsecond
    assert view.last_usable_day == (expires_at - US).astimezone(tz).date()
    # seconds_left is within one second of the exact difference
    assert abs(view.seconds_left - (expires_at - at).total_seconds()) < 1


@given(instants, instants)
def test_seconds_until_antisymmetric_around_zero(a: datetime, b: datetime) -> None:
    s = seconds_until(a, b)
    assert (s > 0) == (b < a)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/New_York"])
def test_the_ends_of_the_calendar_saturate(zone: str) -> None:
    from keyd.checks.ladder import ladder
    from keyd.timeutil import EARLIEST, get_zone, midnight

    tz = get_zone(zone)
    zero = datetime(1, 1, 1, tzinfo=UTC)  # Go's zero time
    view = evaluate(zero, datetime(2026, 1, 1, tzinfo=UTC), tz)
    assert view.status == "expired" and view.last_usable_day is not None
    assert [r.due_at for r in ladder(zero, [timedelta(days=30)])] == [EARLIEST, zero]
    assert midnight(date(1, 1, 1), tz) >= EARLIEST
    assert evaluate(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), zero, tz).status == "never"


@given(st.integers(min_value=1, max_value=400 * 86_400))
def test_people_read_the_same_day_count_everywhere(seconds: int) -> None:
    """The mail subject ("expires in 4 days") and the status table's DAYS
    column count days the same way (4d 13h is 4 days, not 5)."""
    words = time_left(seconds)
    days = days_left(seconds)
    assert days is not None
    if days >= 1:
        assert words == f"{days} day" + ("s" if days != 1 else "")
    else:
        assert "day" not in words


@pytest.mark.parametrize(
    ("seconds", "days", "short", "exact"),
    [
        (4 * 86_400 + 23 * 3600, "4 days", "4d", "4d 23h"),  # whole days rounded down
        (86_400, "1 day", "1d", "1d"),
        (86_399, "23h 59m", "23h 59m", "23h 59m"),  # under a day: the two largest units
        (5 * 3600 + 12 * 60 + 7, "5h 12m", "5h 12m", "5h 12m"),
        (0, "0s", "0s", "0s"),
        (-2 * 86_400 - 3600, "-2d 1h", "-2d 1h", "-2d 1h"),  # past: never "N days"
        (None, "unknown time", "unknown time", "unknown time"),
    ],
)
def test_time_left_styles(seconds: int | None, days: str, short: str, exact: str) -> None:
    """The one "time left for people" function: alert subjects (days),
    keyd check (short), mail facts, keyd inspect and "ago" (exact)."""
    assert (time_left(seconds), time_left(seconds, "short"), time_left(seconds, "exact")) == (
        days,
        short,
        exact,
    )


def test_views_say_time_left_through_time_left() -> None:
    """keyd check's line, keyd inspect and the status pages' "ago" agree with it."""
    from keyd.cli.keys import _left
    from keyd.report.render import ago

    assert _left(4 * 86_400 + 3 * 3600) == "4d 3h left"
    assert _left(-3 * 86_400 - 5) == "expired 3d ago"
    assert _left(-5) == "expired"
    assert ago(T0, T0 + timedelta(hours=3, minutes=12, seconds=30)) == "3h 12m ago"
    assert ago(T0 + timedelta(minutes=5), T0) == "in 5m"
