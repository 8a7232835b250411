"""Where a key stands on its expiry at a given instant (docs/zitadel.md §2).

Pure: no clock, no I/O. ``evaluate`` is the one definition of "expired",
"expiring", "days left" and "last usable day" that ``keyd inspect``,
``keyd status``, the alert ladder and the probe's local diagnosis share, so
they can never disagree.

Rules:

* expired iff ``at >= expires_at``: ZITADEL checks ``expiration > now``
  strictly, so at the instant itself the key is already dead.
* ``9999-12-31T23:59:59Z`` (any instant in year 9999) means "never expires"
  (docs/zitadel.md §1): status ``never``, no ``seconds_left``, no last day.
* No expiry at all (pre-2024 files) is ``unknown``: never guessed.
* ``seconds_left`` is an integer that is ``> 0`` exactly while the key is
  usable (a fraction of a second left rounds *up*; an expiry in the past
  rounds *down*), so ``seconds_left > 0`` and ``status`` always agree.
* The last usable local day is the calendar date, in the configured time
  zone, of the last microsecond before ``expires_at``: a key picked in the
  console as "expires 2026-06-01" (CET) dies at 2026-05-31T22:00:00Z and
  its last usable day is 2026-05-31.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Final, Literal

from keyd.clock import utc
from keyd.sources.keyfile import NEVER_YEAR, Expiry
from keyd.timeutil import format_duration, local_date, shift
from keyd.vocab import ExpiryStatus

DEFAULT_WARN_BEFORE: Final = timedelta(days=30)
_US: Final = timedelta(microseconds=1)
_DAY_SECONDS: Final = 86_400


def warn_window(thresholds: Iterable[timedelta]) -> timedelta:
    """How far ahead a key counts as expiring: the widest alert threshold
    (30 days when none is configured). The verdict, the status line, the
    status page and ``keyd status`` all warn from this one window."""
    return max(thresholds, default=DEFAULT_WARN_BEFORE)


@dataclass(frozen=True)
class ExpiryView:
    """A key's expiry as seen at one instant.

    ``expires_at`` is aware UTC (the sentinel itself for ``never``, None
    for ``unknown``); ``seconds_left`` and ``last_usable_day`` are None for
    ``never`` and ``unknown``.
    """

    status: ExpiryStatus
    seconds_left: int | None
    expires_at: datetime | None
    last_usable_day: date | None

    @property
    def days_left(self) -> int | None:
        return days_left(self.seconds_left)

    @property
    def usable(self) -> bool | None:
        """True/False when known; None when the expiry is unknown."""
        if self.status == ExpiryStatus.UNKNOWN:
            return None
        return self.status != ExpiryStatus.EXPIRED


def days_left(seconds_left: int | None) -> int | None:
    """Whole days left, rounded down (``-1`` from one second past expiry).

    ``0`` means "dies within the next 24 hours" (or at this very instant,
    which ``status`` reports as expired). None stays None.
    """
    if seconds_left is None:
        return None
    return seconds_left // _DAY_SECONDS


#: How ``time_left`` says 4 days 23 hours: ``"4 days"`` (alert subjects),
#: ``"4d"`` (``keyd check``'s one line) or ``"4d 23h"`` (a mail's facts,
#: ``keyd inspect``).
LeftStyle = Literal["days", "short", "exact"]


def time_left(seconds: int | None, style: LeftStyle = "days") -> str:
    """Time left (or, negated, time since) for people: the one function
    every view uses. ``days`` and ``short`` count whole days rounded down,
    as ``days_left`` and the status table do (4d 23h is 4 days), so a
    subject never says 5 days where the table says 4; under a day, and
    always in the ``exact`` style, the two largest units (``"5h 12m"``).
    None (no expiry) is ``"unknown time"``."""
    if seconds is None:
        return "unknown time"
    days = days_left(seconds) or 0
    if days < 1 or style == "exact":
        return format_duration(seconds)
    if style == "short":
        return f"{days}d"
    return f"{days} day" + ("s" if days != 1 else "")


def is_never(expires_at: datetime) -> bool:
    """The "no expiry" sentinel (docs/zitadel.md §1): any instant in year 9999."""
    return expires_at.year >= NEVER_YEAR


def last_usable_day(expires_at: datetime, tz: tzinfo = UTC) -> date:
    """Local calendar date of the last microsecond before ``expires_at``."""
    return local_date(shift(utc(expires_at), -_US), tz)


def seconds_until(expires_at: datetime, at: datetime) -> int:
    """Integer seconds, ``> 0`` exactly while ``at < expires_at``."""
    micros = (utc(expires_at) - utc(at)) // _US
    if micros > 0:
        return -(-micros // 1_000_000)  # ceil: half a second left is still "1 s"
    return micros // 1_000_000  # floor: at the instant 0, then negative


def evaluate(
    expiry: Expiry | datetime | None,
    at: datetime,
    tz: tzinfo = UTC,
    warn_before: timedelta = DEFAULT_WARN_BEFORE,
) -> ExpiryView:
    """Classify ``expiry`` at instant ``at`` (see the module docstring).

    ``expiring`` means usable but with ``warn_before`` or less left
    (``at >= expires_at - warn_before``). ``at`` must be aware; a naive
    ``expires_at`` is taken as UTC (what SQLite hands back).
    """
    if at.tzinfo is None:
        raise ValueError("evaluate() needs an aware 'at' instant")
    expires_at = expiry.at if isinstance(expiry, Expiry) else expiry
    if expires_at is None:
        return ExpiryView(ExpiryStatus.UNKNOWN, None, None, None)
    expires_at = utc(expires_at)
    if is_never(expires_at):
        return ExpiryView(ExpiryStatus.NEVER, None, expires_at, None)
    left = seconds_until(expires_at, at)
    status: ExpiryStatus
    if utc(at) >= expires_at:
        status = ExpiryStatus.EXPIRED
    elif expires_at - utc(at) <= warn_before:
        status = ExpiryStatus.EXPIRING
    else:
        status = ExpiryStatus.VALID
    return ExpiryView(status, left, expires_at, last_usable_day(expires_at, tz))
