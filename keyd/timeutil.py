"""Durations, instants and ZITADEL's midnight rule (docs/zitadel.md §2).

Pure functions; no clock. All returned datetimes are aware UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)"
_DURATION_RE = re.compile(rf"^\s*(?:{_PART}\s*)+$")
_PART_RE = re.compile(_PART)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# RFC 3339: date 'T' time, optional fraction of any length, Z or ±hh:mm.
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


# Longest duration keyd accepts: a century. Anything longer is a typo, and
# "now + duration" must stay a representable instant.
MAX_DURATION: Final = timedelta(days=36_525)


class DurationOutOfRange(ValueError):
    """A well-formed duration longer than ``MAX_DURATION``."""


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"5m"``, ``"6h"``, ``"30d"``, ``"2w"``, ``"250ms"``, and
    compounds of them, largest unit first or not: ``"1h30m"``, ``"1d12h"``.

    Raises ``ValueError`` with the offending text (``DurationOutOfRange``
    for one longer than ``MAX_DURATION``); callers wrap it in a
    ``ConfigError`` that names the file and key.
    """
    if not isinstance(text, str):
        raise ValueError(f'{text!r} is not a duration (expected a string like "6h")')
    if len(text) > 64 or not _DURATION_RE.match(text):
        raise ValueError(f'{text!r} is not a duration (use a number and s, m, h, d or w: "6h", "1h30m")')
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART_RE.findall(text))
    if seconds > MAX_DURATION.total_seconds():
        raise DurationOutOfRange(f"{text!r} is longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta | float) -> str:
    """Human form, largest two units: ``"4d 3h"``, ``"12m"``, ``"-2d 1h"``."""
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return sign + " ".join(parts)


def get_zone(name: str) -> tzinfo:
    """A ``ZoneInfo`` by IANA name; ``ValueError`` names the bad zone."""
    if name.upper() == "UTC":
        return UTC
    shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}… ({len(name)} characters)"
    if len(name) > 255:  # IANA names are short; a long one makes the OS refuse the path
        raise ValueError(f'{shown} is not a known time zone (e.g. "Europe/Zurich")')
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f'{shown} is not a known time zone (e.g. "Europe/Zurich")') from exc


# The instants a ``datetime`` can hold, as aware UTC. Key files may carry
# Go's zero time (0001-01-01T00:00:00Z) or the "never" sentinel in year
# 9999: arithmetic and zone conversions near these ends saturate here
# instead of raising OverflowError deep inside a stage.
EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
LATEST: Final = datetime.max.replace(tzinfo=UTC)


def shift(instant: datetime, delta: timedelta) -> datetime:
    """``instant + delta``, clamped to [``EARLIEST``, ``LATEST``]."""
    try:
        return instant + delta
    except OverflowError:
        return EARLIEST if delta < timedelta(0) else LATEST


def local_date(instant: datetime, tz: tzinfo) -> date:
    """The calendar date of ``instant`` in ``tz``; at the ends of the range,
    where the local date is not representable, the nearest one that is."""
    try:
        return instant.astimezone(tz).date()
    except (OverflowError, ValueError):
        return date.min if instant.year < 2 else date.max


def midnight(day: date, tz: tzinfo) -> datetime:
    """00:00 at the *start* of ``day`` in ``tz``, as UTC (docs/zitadel.md §2).
    ``0001-01-01`` in a zone east of UTC begins before the first instant a
    ``datetime`` holds: it saturates to ``EARLIEST``."""
    try:
        return datetime.combine(day, time(0, 0), tzinfo=tz).astimezone(UTC)
    except (OverflowError, ValueError):
        return EARLIEST if day.year < 2 else LATEST


def parse_rfc3339(text: str) -> datetime:
    """Strict RFC 3339 with any fraction length and any offset → aware UTC.

    Raises ``ValueError``. (``datetime.fromisoformat`` accepts far more than
    RFC 3339 and fewer fraction lengths on some versions, so match first.)
    """
    match = _RFC3339_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    y, mo, d, h, mi, s, frac, off = match.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if off in ("Z", "z"):
        offset = timedelta(0)
    else:
        sign = 1 if off[0] == "+" else -1
        oh, om = int(off[1:3]), int(off[4:6])
        if oh > 23 or om > 59:
            raise ValueError(f"{text!r} has an invalid UTC offset")
        offset = sign * timedelta(hours=oh, minutes=om)
    second = min(int(s), 59)  # a leap second is taken as :59
    try:
        stamp = datetime(int(y), int(mo), int(d), int(h), int(mi), second, micro, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date and time") from exc
    try:
        return stamp - offset
    except OverflowError as exc:
        raise ValueError(f"{text!r} is out of range") from exc


def parse_when(text: str, tz: tzinfo = UTC) -> datetime:
    """An RFC 3339 instant, or a bare date meaning midnight at its start in
    ``tz`` (docs/zitadel.md §2). Used for ``--at`` and date-only expiries."""
    text = text.strip()
    if _DATE_RE.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid date") from exc
        return midnight(day, tz)
    return parse_rfc3339(text)


def rfc3339_z(dt: datetime) -> str:
    """The instant as it is, in UTC with a ``Z``: a fraction only when there
    is one, without trailing zeros (``12:00:00.5Z``). For showing expiry
    instants: ``12:00:00.5Z`` is not ``12:00:00Z``, the key still works at
    12:00:00. Identities (rung names, episode ids) keep ``isoformat_z``."""
    text = dt.astimezone(UTC).isoformat().replace("+00:00", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text + "Z"


def isoformat_z(dt: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix and whole seconds (stable for --json)."""
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
