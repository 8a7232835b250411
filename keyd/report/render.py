"""Plain-text rendering helpers for CLI tables (no I/O, no colour).

Kept dumb on purpose: every command builds its rows as strings and hands
them here, so alignment rules live in one place and output stays stable
for people who grep it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime

from keyd.checks.expiry import time_left
from keyd.text import escape
from keyd.timeutil import isoformat_z, rfc3339_z

DASH = "-"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, gap: int = 2) -> str:
    """Left-aligned columns sized to their widest cell; no trailing spaces."""
    matrix = [list(headers), *([escape(str(c)) for c in row] for row in rows)]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in matrix) for i in range(len(headers))]
    lines = []
    for row in matrix:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((" " * gap).join(cells).rstrip())
    return "\n".join(lines)


def line(text: str) -> str:
    """One line for a person (a terminal, a Nagios check): control
    characters from key files, file names or Vault paths are escaped
    (``keyd.text.escape``), so a value cannot forge another line."""
    return escape(text)


def instant(value: datetime | None) -> str:
    """``2027-01-01T00:00:00Z`` or ``-``."""
    return isoformat_z(value) if value is not None else DASH


def expiry(value: datetime | None) -> str:
    """An expiry instant exactly, fraction included (``12:00:00.5Z``), or ``-``."""
    return rfc3339_z(value) if value is not None else DASH


def day(value: date | None) -> str:
    return value.isoformat() if value is not None else DASH


def number(value: int | None) -> str:
    return str(value) if value is not None else DASH


def ago(value: datetime | None, now: datetime) -> str:
    """``3h 12m ago`` (or ``in 5m`` for a future instant, e.g. with --at)."""
    if value is None:
        return DASH
    seconds = int((now - value).total_seconds())
    if seconds < 0:
        return f"in {time_left(-seconds, 'exact')}"
    return f"{time_left(seconds, 'exact')} ago"


def shorten(text: str, width: int) -> str:
    """Cut long cells (paths) in the middle: ``/etc/keyd/…/a.json``."""
    if len(text) <= width or width < 5:
        return text
    head = (width - 1) // 2
    tail = width - 1 - head
    return f"{text[:head]}…{text[-tail:]}"
