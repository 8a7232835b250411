"""The status page (``GET /``) and one key's page (``GET /keys/{key_id}``).

Rendered on the server from frozen rows (``IndexPage``/``KeyPage``, put
together by ``keyd.runtime.views``): a summary line with the same verdict
as ``keyd check``, the overview (counts by status and expiry window), the
expiry timeline (``keyd.report.timeline``) of the keys shown, the keys
that need attention, one page of the key listing (``Listing``: links, no
form), both with the columns of ``keyd status`` plus token write-back,
problems (invalid files, permission warnings, failing sources, refused
token paths) and the last audit events. Read-only: no form, no action.
Bounded at any inventory size: what it shows is read by ``keyd.store.page``.

Never shown: key material, tokens, webhook URLs (the store does not even
read them for the page). Every text from files, Vault or remote servers is
escaped (``web.e``); error texts are also scrubbed of anything shaped like
a token or a PEM (``keyd.redact.scrub``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlencode

from keyd.exposure import exposure_text
from keyd.redact import scrub
from keyd.report import render
from keyd.report.status import KeyStatus, StatusReport, problems, shown_status
from keyd.report.timeline import key_href, render_timeline
from keyd.report.web import Row, cell, document, e, facts, legend, status_class, table
from keyd.store.models import threshold_text
from keyd.store.page import ExpiryWindow
from keyd.store.probes import ProbeHistoryRow
from keyd.store.rotations import RotationRow
from keyd.store.snapshot import TokenSnapshot
from keyd.store.views import AlertRow, EventRow, SinkRow
from keyd.vocab import ExpiryStatus, LocationStatus, SinkState
from keyd.vocab import KeyStatus as Lifecycle

#: Token sink states that are a refusal keyd reports (it will not write there).
REFUSED: Final = (SinkState.UNMANAGED, SinkState.CONFLICT)
#: The attention table lists at most this many keys, the most urgent first
#: (every one of them counts in the verdict and the aggregates).
ATTENTION_LIMIT: Final = 500
#: Keys per page of the listing (``/?after=KEY_ID``).
PAGE_SIZE: Final = 100
#: Problem lines of one kind (invalid files, permission warnings) shown.
PROBLEM_LIMIT: Final = 200
#: Shown statuses (``shown_status``, first word) of a key that needs attention.
ATTENTION_SHOWN: Final = (
    Lifecycle.EXPIRED,
    Lifecycle.REJECTED,
    Lifecycle.INVALID,
    ExpiryStatus.EXPIRING,
    Lifecycle.UNHELD,
)
_URGENCY: Final = {"expired": 0, "rejected": 0, "invalid": 0, "expiring": 1, "unheld": 1, "active": 2}


@dataclass(frozen=True)
class Listing:
    """Which page of the key listing ``/`` shows (its query string):
    keys in key id order after ``after``, only ``principal``'s, only ids
    starting with ``key_prefix``; ``next_after``: where the next page
    starts (None: this is the last one)."""

    after: str | None = None
    principal: str | None = None
    key_prefix: str | None = None
    next_after: str | None = None

    def href(self, after: str | None) -> str:
        params = [("principal", self.principal), ("key", self.key_prefix), ("after", after)]
        query = urlencode([(k, v) for k, v in params if v])
        return "/?" + query if query else "/"

    @property
    def filtered(self) -> bool:
        return bool(self.principal or self.key_prefix)


@dataclass(frozen=True)
class Overview:
    """Inventory-wide aggregates (``keyd.store.page``): keys by stored
    status and, for keys not missing, by expiry window."""

    by_status: Mapping[str, int]
    windows: Sequence[ExpiryWindow]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


@dataclass(frozen=True)
class IndexPage:
    report: StatusReport  # the keys shown (attention, then this page of the listing)
    verdict: str  # ok | warning | critical | unknown (``keyd check``)
    summary: str  # ``keyd check``'s one line
    thresholds: tuple[timedelta, ...]
    tokens: Mapping[str, TokenSnapshot]  # by key id
    events: Sequence[EventRow]
    version: str
    rotations: Mapping[str, str] = field(default_factory=dict)  # key id -> ``rotation_labels``
    # None: derived from ``report`` (a small inventory rendered whole)
    attention: Sequence[KeyStatus] | None = None
    listed: Sequence[KeyStatus] | None = None
    listing: Listing = field(default_factory=Listing)
    overview: Overview | None = None
    problem_lines: Sequence[str] | None = None


@dataclass(frozen=True)
class KeyPage:
    key: KeyStatus
    at: datetime
    zone: str
    probes: Sequence[ProbeHistoryRow]
    alerts: Sequence[AlertRow]
    events: Sequence[EventRow]
    sink: SinkRow | None
    version: str
    rotation: RotationRow | None = None  # the rotation of this key, or the one that made it


def _zone(report: StatusReport) -> str:
    return getattr(report.tz, "key", None) or str(report.tz)


def _clean(text: str | None) -> str:
    return scrub(text) if text else ""


def needs_attention(key: KeyStatus, page: IndexPage) -> bool:
    """What ``keyd.store.page.attention`` selects, for one key in hand."""
    token = page.tokens.get(key.row.key_id)
    return (
        status_class(shown_status(key))[2:] in ATTENTION_SHOWN
        or (bool(key.row.last_error) and key.status != Lifecycle.MISSING)
        or (token is not None and token.state in (*REFUSED, SinkState.FAILED))
        or key.row.key_id in page.rotations
    )


def render_index(page: IndexPage) -> str:
    report = page.report
    body = [
        "<header><h1>keyd</h1>",
        f'<p class="summary verdict-{e(page.verdict)}" id="summary">{e(page.summary)}</p>',
        f'<p class="muted">as of {e(render.instant(report.at))}; last usable days in '
        f"{e(_zone(report))}</p></header><main>",
    ]
    if page.overview is not None:
        body += [
            '<section aria-labelledby="h-overview"><h2 id="h-overview">Overview</h2>',
            _overview(page.overview),
            "</section>",
        ]
    body += [
        '<section aria-labelledby="h-timeline"><h2 id="h-timeline">Expiry timeline</h2>',
        render_timeline(report, page.thresholds),
        legend(),
        _timeline_note(page),
        "</section>",
        '<section aria-labelledby="h-attention"><h2 id="h-attention">Needs attention</h2>',
        _attention_table(page),
        "</section>",
        '<section aria-labelledby="h-keys"><h2 id="h-keys">Keys</h2>',
        '<label for="filter-keys">Filter keys</label>'
        '<input id="filter-keys" type="search" data-filter="keys" autocomplete="off">',
        _listing_table(page),
        "</section>",
        '<section aria-labelledby="h-problems"><h2 id="h-problems">Problems</h2>',
        _problems(page),
        "</section>",
        '<section aria-labelledby="h-events"><h2 id="h-events">Recent events</h2>',
        _events(page.events, "events", "The last audit events, newest first"),
        "</section></main>",
        f"<footer>keyd {e(page.version)}</footer>",
    ]
    return document("keyd status", "\n".join(body), script=True)


def _overview(overview: Overview) -> str:
    statuses = sorted(overview.by_status.items(), key=lambda item: (-item[1], item[0]))
    pairs = [("Keys", e(f"{overview.total:,}"))]
    pairs += [(status, e(f"{n:,}")) for status, n in statuses]
    windows: list[Row] = [
        ({"data-window": w.label}, [e(w.label), cell(f"{w.count:,}", css="num")]) for w in overview.windows
    ]
    return (
        '<div id="overview">'
        + facts(pairs)
        + table("windows", "Keys not missing, by expiry window", ["Expires", "Keys"], windows)
        + "</div>"
    )


def _timeline_note(page: IndexPage) -> str:
    overview = page.overview
    if overview is None or overview.total <= len(page.report.keys):
        return ""
    return (
        f'<p class="muted">Marks for the {len(page.report.keys):,} keys on this page (those that '
        f"need attention and this page of the listing) of {overview.total:,}; the overview counts "
        "every key.</p>"
    )


def _headers(report: StatusReport) -> list[str]:
    return [
        "Key",
        "Principal",
        "Sources",
        "Expires (UTC)",
        f"Last usable day ({_zone(report)})",
        "Days left",
        "Status",
        "Last probe",
        "Token write-back",
        "Rotation",
    ]


def _key_rows(page: IndexPage, keys: Sequence[KeyStatus]) -> list[Row]:
    report = page.report
    rows: list[Row] = []
    for key in keys:
        row, view = key.row, key.expiry
        status = shown_status(key)
        token = page.tokens.get(row.key_id)
        principal = Listing(principal=row.principal).href(None)
        rows.append(
            (
                {"data-key-id": row.key_id},
                [
                    f'<td data-field="key_id" class="wrap"><a href="{e(key_href(row.key_id))}">'
                    f"{e(row.key_id)}</a></td>",
                    f'<td data-field="principal"><a href="{e(principal)}">{e(row.principal)}</a></td>',
                    cell(_sources(key), field="sources", css="wrap"),
                    cell(_expires(key), field="expires_at"),
                    cell(render.day(view.last_usable_day), field="last_usable_day"),
                    cell(
                        render.number(view.days_left),
                        field="days_left",
                        css="num",
                        sort=view.seconds_left if view.seconds_left is not None else 10**12,
                    ),
                    cell(status, field="status", css=f"status {status_class(status)}"),
                    cell(_probe(key, report.at), field="last_probe"),
                    cell(token.state if token else "-", field="token_state"),
                    cell(page.rotations.get(row.key_id, "-"), field="rotation", css="wrap"),
                ],
            )
        )
    return rows


def _attention_table(page: IndexPage) -> str:
    keys = page.attention
    if keys is None:
        keys = [k for k in page.report.keys if needs_attention(k, page)]
    if not keys:
        return "<p>None: no key is expired, expiring, rejected, invalid, unheld, failing or rotating.</p>"
    shown = most_urgent(keys, ATTENTION_LIMIT)
    caption = f"{len(keys):,} keys, the most urgent first"
    if len(shown) < len(keys):
        caption = (
            f"The {len(shown):,} most urgent of {len(keys):,} keys that need attention "
            "(every one is in /api/v1/status and keyd check)"
        )
    return table("attention", caption, _headers(page.report), _key_rows(page, shown), sortable=True)


def _listing_table(page: IndexPage) -> str:
    keys = page.listed if page.listed is not None else page.report.keys
    listing = page.listing
    where = []
    if listing.principal:
        where.append(f"of principal {listing.principal}")
    if listing.key_prefix:
        where.append(f"with ids starting {listing.key_prefix}")
    scope = " ".join(where)
    links = []
    if listing.after or listing.filtered:
        first = Listing(principal=listing.principal, key_prefix=listing.key_prefix).href(None)
        links.append(f'<a href="{e(first)}">first page</a>')
    if listing.filtered:
        links.append('<a href="/">all keys</a>')
    if listing.next_after:
        links.append(f'<a rel="next" href="{e(listing.href(listing.next_after))}">next {PAGE_SIZE} keys</a>')
    nav = f'<nav aria-label="Key pages" class="pages">{" · ".join(links)}</nav>' if links else ""
    if not keys:
        if listing.after or listing.filtered:
            return f"<p>No keys {e(scope)} on this page.</p>" + nav
        return "<p>No keys in the inventory yet (the first scan has not run).</p>"
    caption = f"{len(keys):,} keys {scope}".rstrip() + ", by key id"
    if page.overview is not None and (listing.next_after or listing.after):
        caption += f" (from {keys[0].row.key_id} on; {PAGE_SIZE} per page)"
    return table("keys", caption, _headers(page.report), _key_rows(page, keys), sortable=True) + nav


def most_urgent(keys: Sequence[KeyStatus], limit: int) -> Sequence[KeyStatus]:
    """The ``limit`` most urgent keys, most urgent first (expired, rejected,
    invalid; then expiring and unheld; soonest expiry first in each)."""

    def urgency(key: KeyStatus) -> tuple[int, float, str]:
        left = key.expiry.seconds_left
        rank = _URGENCY.get(status_class(shown_status(key))[2:], 3)
        return rank, left if left is not None else float("inf"), key.row.key_id

    return sorted(keys, key=urgency)[:limit]


def _sources(key: KeyStatus) -> str:
    present = sorted({loc.source for loc in key.row.locations if loc.status == LocationStatus.PRESENT})
    return ", ".join(present) or f"({', '.join(sorted({loc.source for loc in key.row.locations}))})"


def _expires(key: KeyStatus) -> str:
    if key.expiry.status in (ExpiryStatus.NEVER, ExpiryStatus.UNKNOWN):
        return key.expiry.status
    return render.expiry(key.expiry.expires_at)


def _probe(key: KeyStatus, at: datetime) -> str:
    if key.row.last_probe_at is None:
        return "never"
    return f"{key.row.last_probe_outcome or '?'} {render.ago(key.row.last_probe_at, at)}"


def _problems(page: IndexPage) -> str:
    base = page.problem_lines if page.problem_lines is not None else problems(page.report)
    lines = [scrub(line) for line in base]
    for key_id, token in sorted(page.tokens.items()):
        if token.state in REFUSED:
            lines.append(
                f"token path {token.sink} for key {key_id}: refused ({token.state}): "
                "keyd will not overwrite a secret it does not manage"
            )
        elif token.state == SinkState.FAILED:
            lines.append(f"token path {token.sink} for key {key_id}: write-back failing")
    if not lines:
        return "<p>None.</p>"
    return '<ul class="problems">' + "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul>"


def _detail(detail: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in detail.items())


def _events(events: Sequence[EventRow], table_id: str, caption: str) -> str:
    if not events:
        return "<p>No events yet.</p>"
    rows: list[Row] = []
    for ev in events:
        key = f'<a href="{e(key_href(ev.key_id))}">{e(ev.key_id)}</a>' if ev.key_id else "-"
        rows.append(
            (
                {},
                [
                    cell(render.instant(ev.at), css="when"),
                    f'<td class="wrap">{key}</td>',
                    e(ev.kind),
                    cell(ev.source or "-", css="wrap"),
                    cell(scrub(_detail(ev.detail)), css="wrap"),
                ],
            )
        )
    return table(table_id, caption, ["When (UTC)", "Key", "Event", "Source", "Detail"], rows)


# --- one key --------------------------------------------------------------


def render_key(page: KeyPage) -> str:
    key, row = page.key, page.key.row
    status = shown_status(key)
    view = key.expiry
    summary = facts(
        [
            ("Principal", e(row.principal)),
            ("Kind", e(row.kind)),
            ("Algorithm", e(row.algorithm)),
            ("Fingerprint", f"<code>{e(row.fingerprint)}</code>"),
            ("Status", f'<span class="status {status_class(status)}">{e(status)}</span>'),
            ("Expires (UTC)", e(_expires(key))),
            (f"Last usable day ({page.zone})", e(render.day(view.last_usable_day))),
            ("Days left", e(render.number(view.days_left))),
            ("First seen", e(render.instant(row.first_seen))),
            ("Last probe", e(_probe(key, page.at))),
            ("Last error", e(_clean(row.last_error) or "-")),
        ]
    )
    body = [
        '<header><p><a href="/">&larr; all keys</a></p>',
        f"<h1>Key <code>{e(row.key_id)}</code></h1></header><main>",
        summary,
        '<h2 id="h-locations">Locations</h2>',
        _locations(key),
        '<h2 id="h-token">Token write-back</h2>',
        _sink(page.sink),
        '<h2 id="h-rotation">Rotation</h2>',
        _rotation(page.rotation, row.key_id),
        '<h2 id="h-probes">Probe history</h2>',
        _probes(page.probes),
        '<h2 id="h-alerts">Alerts sent</h2>',
        _alerts(page.alerts),
        '<h2 id="h-key-events">Events</h2>',
        _events(page.events, "key-events", "This key's audit events, newest first"),
        f"</main><footer>keyd {e(page.version)} · as of {e(render.instant(page.at))}</footer>",
    ]
    return document(f"keyd: key {row.key_id}", "\n".join(body))


def _locations(key: KeyStatus) -> str:
    rows: list[Row] = [
        (
            {},
            [
                e(loc.source),
                f"<code>{e(loc.ref)}</code>",
                e(loc.status),
                e(_clean(loc.error) or "-"),
                e(exposure_text(loc.warnings) or "-"),
                e(render.instant(loc.last_seen)),
            ],
        )
        for loc in key.row.locations
    ]
    return table(
        "locations",
        "Where the key file was found",
        ["Source", "Location", "Status", "Error", "Warning", "Last seen (UTC)"],
        rows,
    )


def _sink(sink: SinkRow | None) -> str:
    if sink is None:
        return "<p>No token write-back for this key.</p>"
    return facts(
        [
            ("Vault path", f"<code>{e(sink.mount)}/{e(sink.path)}</code>"),
            ("File", f"<code>{e(sink.file_path)}</code>" if sink.file_path else "-"),
            ("State", e(sink.state)),
            ("Issued (UTC)", e(render.instant(sink.issued_at))),
            ("Token expires (UTC)", e(render.instant(sink.expires_at))),
            ("Next refresh (UTC)", e(render.instant(sink.next_refresh_at))),
            ("Failures in a row", e(sink.failures)),
            ("Last error", e(_clean(sink.last_error) or "-")),
        ]
    )


def rotation_labels(rows: Sequence[RotationRow]) -> dict[str, str]:
    """The table's rotation column: the old key shows the rotation's state
    (and its new key), the new key where it came from."""
    labels: dict[str, str] = {}
    for r in rows:
        text = r.state + (f" ({r.failed_step})" if r.failed_step else "")
        labels[r.old_key_id] = text + (f" → {r.new_key_id}" if r.new_key_id else "")
        if r.new_key_id:
            labels.setdefault(r.new_key_id, f"new, replaces {r.old_key_id} ({r.state})")
    return labels


def _rotation(r: RotationRow | None, key_id: str) -> str:
    if r is None:
        return "<p>Not rotated by keyd.</p>"
    role = "this key is being replaced" if r.old_key_id == key_id else "this key replaces"
    return facts(
        [
            ("Role", e(role)),
            ("Old key", e(r.old_key_id)),
            ("New key", e(r.new_key_id or "-")),
            ("State", e(r.state)),
            ("Reason", e(r.reason)),
            ("Attempt", e(r.attempt)),
            ("Planned (UTC)", e(render.instant(r.planned_at))),
            ("Published (UTC)", e(render.instant(r.published_at))),
            ("Finished (UTC)", e(render.instant(r.finished_at))),
            ("Failed step", e(r.failed_step or "-")),
            ("Last error", e(_clean(r.last_error) or "-")),
        ]
    )


def _probes(probes: Sequence[ProbeHistoryRow]) -> str:
    if not probes:
        return "<p>Not probed yet.</p>"
    rows: list[Row] = [
        (
            {},
            [
                cell(render.instant(p.at), css="when"),
                e(p.outcome),
                e(render.number(p.http_status)),
                e(p.error_code or "-"),
                e(p.diagnosis or "-"),
                e(_clean(p.message) or "-"),
                e(f"{p.latency_ms:.0f} ms" if p.latency_ms is not None else "-"),
                e(p.attempts),
            ],
        )
        for p in probes
    ]
    return table(
        "probes",
        "The latest validation probes, newest first",
        ["When (UTC)", "Outcome", "HTTP", "Error", "Diagnosis", "Message", "Latency", "Attempts"],
        rows,
    )


def _alerts(alerts: Sequence[AlertRow]) -> str:
    if not alerts:
        return "<p>No alerts for this key.</p>"
    rows: list[Row] = []
    for a in alerts:
        sent = (
            "; ".join(
                f"{d.channel}: {d.state} "
                + (render.instant(d.sent_at) if d.sent_at else f"({d.attempts} attempts)")
                for d in a.deliveries
            )
            or "-"
        )
        rows.append(
            (
                {},
                [
                    cell(render.instant(a.created_at), css="when"),
                    e(a.kind),
                    e(threshold_text(a.threshold, a.expires_at)),
                    e(a.severity),
                    e(a.subject),
                    e(render.instant(a.resolved_at)),
                    e(sent),
                ],
            )
        )
    return table(
        "alerts",
        "Alerts decided for this key, newest first",
        ["When (UTC)", "Kind", "Rung", "Severity", "Subject", "Resolved", "Deliveries"],
        rows,
    )
