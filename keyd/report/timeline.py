"""The status page's expiry timeline: an SVG drawn on the server.

One mark for **every** key of the report (the status page passes the
keys it shows: those that need attention and one page of the listing), on a time axis from ``at`` (now) to the
farthest alert threshold: keys expiring later are pinned in a zone at the
far end, expired ones in a zone at the start, and keys without an expiry
date (``never``, or ``unknown`` for files without ``expirationDate``) in a
lane of their own. The thresholds are drawn as bands, marks are colored by
the status the table shows (CSS classes ``s-<status>``, colors in the
page's style sheet) and each mark's ``<title>`` (the hover text) names the
key, its status, its expiry instant and its last usable day. A mark links
to the key's page.

Pure: a function of the ``StatusReport`` and the thresholds. Every text
comes from files or Vault and is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from typing import Final
from urllib.parse import quote

from keyd.checks.expiry import DEFAULT_WARN_BEFORE
from keyd.report import render
from keyd.report.status import KeyStatus, StatusReport, shown_status
from keyd.report.web import status_class
from keyd.timeutil import format_duration
from keyd.vocab import ExpiryStatus

WIDTH: Final = 960
ZONE: Final = 72  # width of the "expired" and "later" zones
UNDATED: Final = (ExpiryStatus.NEVER, ExpiryStatus.UNKNOWN)  # no place on the time axis
LEFT: Final = 120  # lane labels, then the expired zone
X_NOW: Final = LEFT + ZONE
X_END: Final = WIDTH - ZONE - 16
STEP: Final = 12  # distance between stacked marks
RADIUS: Final = 5
MAX_ROWS: Final = 12  # beyond this marks overlap (every key still has its mark)
TOP: Final = 28


@dataclass(frozen=True)
class _Mark:
    key: KeyStatus
    x: float
    row: int


def key_href(key_id: str) -> str:
    """The page of one key (the id percent-encoded: it is arbitrary text)."""
    return "/keys/" + quote(key_id, safe="")


def render_timeline(report: StatusReport, thresholds: Sequence[timedelta] = ()) -> str:
    """The ``<svg>`` element (see the module docstring)."""
    bands = sorted({t for t in thresholds if t > timedelta(0)}) or [DEFAULT_WARN_BEFORE]
    horizon = bands[-1]
    dated, undated = _split(report.keys)
    lane1 = _place_dated(dated, report, horizon)
    lane2 = _grid(undated, LEFT, X_END - LEFT)
    h1 = _lane_height(lane1)
    h2 = _lane_height(lane2)
    y2 = TOP + h1 + 8
    height = y2 + h2 + 36
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
        f'aria-labelledby="tl-title tl-desc" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}">',
        '<title id="tl-title">Expiry timeline</title>',
        f'<desc id="tl-desc">{len(report.keys)} keys from now to '
        f"{escape(format_duration(horizon))} ahead; expired keys at the start, later ones "
        "at the end, keys without an expiry date in the lower lane.</desc>",
        *_bands(bands, horizon, TOP, h1 + 8 + h2),
        _zone(LEFT, TOP, h1, "expired", "zone-expired"),
        _zone(X_END, TOP, h1, "later", "zone-later"),
        f'<text class="lane" x="4" y="{TOP + 14}">expiry date</text>',
        f'<text class="lane" x="4" y="{y2 + 14}">never / unknown</text>',
        f'<line class="now" x1="{X_NOW}" x2="{X_NOW}" y1="{TOP - 6}" y2="{height - 24}"/>',
        f'<text class="axis" x="{X_NOW}" y="{height - 8}" text-anchor="middle">now '
        f"{escape(render.day(report.at.astimezone(report.tz).date()))}</text>",
        f'<text class="axis" x="{X_END}" y="{height - 8}" text-anchor="middle">'
        f"{escape(render.day((report.at + horizon).astimezone(report.tz).date()))}</text>",
    ]
    parts += [_mark(m, TOP) for m in lane1]
    parts += [_mark(m, y2) for m in lane2]
    parts.append("</svg>")
    return "\n".join(parts)


def _split(keys: Sequence[KeyStatus]) -> tuple[list[KeyStatus], list[KeyStatus]]:
    dated = [k for k in keys if k.expiry.status not in UNDATED]
    undated = [k for k in keys if k.expiry.status in UNDATED]
    return dated, undated


def _place_dated(keys: list[KeyStatus], report: StatusReport, horizon: timedelta) -> list[_Mark]:
    """Expired keys in the start zone, later ones in the end zone (both as
    grids), the rest at their instant, stacked where marks would touch."""
    expired, inside, later = [], [], []
    for key in sorted(keys, key=lambda k: (k.expiry.expires_at, k.row.key_id)):
        at = key.expiry.expires_at
        assert at is not None  # dated
        if at <= report.at or key.expiry.status == ExpiryStatus.EXPIRED:
            expired.append(key)
        elif at - report.at > horizon:
            later.append(key)
        else:
            inside.append(key)
    marks = _grid(expired, LEFT, ZONE) + _grid(later, X_END, ZONE)
    last_x: list[float] = []  # per row: x of its last mark
    span = X_END - X_NOW
    for key in inside:
        at = key.expiry.expires_at
        assert at is not None
        x = X_NOW + span * ((at - report.at) / horizon)
        row = next((r for r, lx in enumerate(last_x) if x - lx >= STEP), None)
        if row is None:
            row = len(last_x) if len(last_x) < MAX_ROWS else len(marks) % MAX_ROWS
            last_x.extend([-STEP] * (row + 1 - len(last_x)))
        last_x[row] = x
        marks.append(_Mark(key, x, row))
    return marks


def _grid(keys: list[KeyStatus], x0: float, width: float) -> list[_Mark]:
    cols = max(1, int(width // STEP))
    return [_Mark(k, x0 + STEP / 2 + (i % cols) * STEP, (i // cols) % MAX_ROWS) for i, k in enumerate(keys)]


def _lane_height(marks: list[_Mark]) -> int:
    rows = max((m.row for m in marks), default=0) + 1
    return rows * STEP + 12


def _bands(bands: list[timedelta], horizon: timedelta, y: int, height: int) -> list[str]:
    """Threshold bands from now to each threshold, the nearest darkest."""
    out: list[str] = []
    start = timedelta(0)
    span = X_END - X_NOW
    for i, end in enumerate(bands):
        x1 = X_NOW + span * (start / horizon)
        x2 = X_NOW + span * (end / horizon)
        out.append(
            f'<rect class="band band-{min(i, 4)}" x="{x1:.1f}" y="{y}" '
            f'width="{x2 - x1:.1f}" height="{height}"/>'
        )
        out.append(
            f'<text class="threshold" x="{x2:.1f}" y="{y - 8}" text-anchor="middle">'
            f"{escape(format_duration(end))}</text>"
        )
        start = end
    return out


def _zone(x: int, y: int, height: int, label: str, css: str) -> str:
    return (
        f'<rect class="{css}" x="{x}" y="{y}" width="{ZONE}" height="{height}"/>'
        f'<text class="zone" x="{x + ZONE / 2}" y="{y - 8}" text-anchor="middle">'
        f"{label}</text>"
    )


def _mark(mark: _Mark, lane_top: int) -> str:
    key = mark.key
    status = shown_status(key)
    view = key.expiry
    shape = ""
    if view.status in UNDATED:
        when = "never expires" if view.status == ExpiryStatus.NEVER else "expiry unknown"
        shape = " undated"
    else:
        when = (
            f"expires {render.instant(view.expires_at)}, last usable day {render.day(view.last_usable_day)}"
        )
    title = f"{key.row.key_id} ({key.row.principal}): {status}, {when}"
    y = lane_top + 6 + STEP / 2 + mark.row * STEP
    # href: percent-encoded, so only "&"-free ASCII; kept small: one mark per key
    return (
        f'<a href="{key_href(key.row.key_id)}">'
        f'<circle class="mark {status_class(status)}{shape}" data-key-id="{escape(key.row.key_id)}" '
        f'cx="{mark.x:.1f}" cy="{y:.1f}" r="{RADIUS}"><title>{escape(title)}</title></circle></a>'
    )
