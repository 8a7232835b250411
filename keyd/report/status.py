"""``keyd status``: the inventory as seen at one instant.

``build_status(snapshot, at, tz)`` turns the store's frozen rows into
``StatusReport``; ``to_json`` gives the stable ``--json`` schema and
``render_text`` the table. Pure: the CLI reads the snapshot and the clock.

JSON (``status_document``: schema ``keyd.status/1``, docs/json.md)
``{"at", "keys": [...], "rotations": [...], "unrotated_application_keys":
[key id, ...]}``: in ``keys`` one object per key, then one per invalid
location that holds no key, which has ``key_id`` null::

    {"key_id": str|null, "kind": str|null, "principal": str|null,
     "fingerprint": str|null, "algorithm": str|null,
     "status": "active"|"expiring"... see below,
     "expiry_status": "valid"|"expiring"|"expired"|"never"|"unknown"|null,
     "expires_at": RFC 3339 UTC|null, "last_usable_day": "YYYY-MM-DD"|null,
     "seconds_left": int|null, "days_left": int|null,
     "locations": [{"source", "ref", "status", "error", "warning", "kind"}],
     "last_probe_at": RFC 3339|null, "last_probe_outcome": str|null,
     "last_ok_at": RFC 3339|null, "last_error": str|null,
     "held": bool|null, "expiry_source": "file"|"zitadel"|null,
     "diagnosis": str|null, "zitadel_created_at": RFC 3339|null}

``status`` is the inventory status (``active``, ``expired``, ``missing``,
``invalid``, ``rejected``, ``unheld``), except that ``active``/``expired``
are re-derived at ``--at`` from the expiry (so ``--at`` in the future shows
what will have expired); an orphan invalid location has ``invalid``.
``held``: a key file (directory or Vault) holds the key; false for a key
only a zitadel source lists (``unheld``). A location's ``kind`` is
``"file"`` (a key file or Vault secret) or ``"zitadel"`` (a listing:
metadata only). ``expiry_source``: where ``expires_at`` comes from
(``zitadel`` for a file without ``expirationDate`` that ZITADEL lists, or
an unheld key). ``diagnosis`` of a ``rejected`` key: ``removed`` when
ZITADEL no longer lists it, else the probe's (``expired``, ``clock_skew``,
``malformed``, ``revoked_or_unknown``).

``rotations``: every open or failed rotation (what the text output lists
under "Rotations")::

    {"old_key_id": str, "principal": str,
     "state": "planned"|"registered"|"proven"|"published"|"failed",
     "failed_step": str|null, "last_error": str|null, "failures": int,
     "planned_at": RFC 3339, "updated_at": RFC 3339,
     "retire_after": RFC 3339|null}

``unrotated_application_keys``: the ids of application keys still found,
which keyd never rotates (expiry alerts only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Final

from keyd import vocab
from keyd.checks.expiry import DEFAULT_WARN_BEFORE, ExpiryView, evaluate, warn_window
from keyd.config import Config
from keyd.exposure import Exposure, exposure_text
from keyd.redact import scrub
from keyd.report import render
from keyd.store import page as page_store
from keyd.store.inventory import Engine, InventorySnapshot, inventory_snapshot
from keyd.store.keys import KeyRecord, Location
from keyd.store.models import SourceState
from keyd.store.page import ProblemLocations
from keyd.store.rotations import RotationSnapshot
from keyd.store.snapshot import SourceSnapshot
from keyd.store.views import key_snapshot
from keyd.timeutil import isoformat_z, rfc3339_z

STATUS_SCHEMA: Final = "keyd.status/1"


@dataclass(frozen=True)
class KeyStatus:
    row: KeyRecord
    status: str
    expiry: ExpiryView


@dataclass(frozen=True)
class StatusReport:
    at: datetime
    tz: tzinfo
    keys: tuple[KeyStatus, ...]
    orphans: tuple[Location, ...]
    sources: tuple[SourceState, ...]


def effective_status(stored: str, expiry: ExpiryView) -> str:
    lifecycle = vocab.KeyStatus
    if stored in (lifecycle.ACTIVE, lifecycle.EXPIRED) and expiry.status != vocab.ExpiryStatus.UNKNOWN:
        return lifecycle.EXPIRED if expiry.status == vocab.ExpiryStatus.EXPIRED else lifecycle.ACTIVE
    return stored


def build_status(
    snapshot: InventorySnapshot, at: datetime, tz: tzinfo, warn_before: timedelta = DEFAULT_WARN_BEFORE
) -> StatusReport:
    keys = []
    for row in snapshot.keys:
        view = evaluate(row.expires_at, at, tz, warn_before)
        keys.append(KeyStatus(row, effective_status(row.status, view), view))
    return StatusReport(at, tz, tuple(keys), snapshot.orphans, snapshot.sources)


def load_status(engine: Engine, config: Config, at: datetime, *, key_id: str | None = None) -> StatusReport:
    """The inventory at ``at`` as the configuration judges it (``expiring``:
    within the largest alert threshold); only ``key_id`` when given. The one
    builder behind both ``keyd status --json`` and ``GET /api/v1/status``
    (and the status page), so they cannot drift."""
    warn_before = warn_window(config.alerts.thresholds)
    rows = inventory_snapshot(engine) if key_id is None else key_snapshot(engine, key_id)
    return build_status(rows, at, config.timezone, warn_before)


# --- JSON ------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return render.instant(value) if value is not None else None


def _location_json(loc: Location) -> dict[str, Any]:
    return {
        "source": loc.source,
        "ref": loc.ref,
        "status": loc.status,
        "error": loc.error,
        "warning": exposure_text(loc.warnings),
        "kind": loc.kind or "file",
    }


def key_json(key: KeyStatus) -> dict[str, Any]:
    row, view = key.row, key.expiry
    return {
        "key_id": row.key_id,
        "kind": row.kind,
        "principal": row.principal,
        "fingerprint": row.fingerprint,
        "algorithm": row.algorithm,
        "status": key.status,
        "expiry_status": view.status,
        "expires_at": rfc3339_z(view.expires_at) if view.expires_at else None,
        "last_usable_day": view.last_usable_day.isoformat() if view.last_usable_day else None,
        "seconds_left": view.seconds_left,
        "days_left": view.days_left,
        "locations": [_location_json(loc) for loc in row.locations],
        "last_probe_at": _iso(row.last_probe_at),
        "last_probe_outcome": row.last_probe_outcome,
        "last_ok_at": _iso(row.last_ok_at),
        "last_error": row.last_error,
        "held": row.held,
        "expiry_source": _expiry_source(row),
        "diagnosis": row.diagnosis,
        "zitadel_created_at": _iso(row.zitadel_created_at),
    }


def _expiry_source(row: KeyRecord) -> str | None:
    if row.expires_at is None:
        return None
    return row.expiry_source or "file"


def orphan_json(loc: Location) -> dict[str, Any]:
    return {
        "key_id": None,
        "kind": None,
        "principal": None,
        "fingerprint": None,
        "algorithm": None,
        "status": vocab.LocationStatus.INVALID,
        "expiry_status": None,
        "expires_at": None,
        "last_usable_day": None,
        "seconds_left": None,
        "days_left": None,
        "locations": [_location_json(loc)],
        "last_probe_at": None,
        "last_probe_outcome": None,
        "last_ok_at": None,
        "last_error": loc.error,
        "held": None,
        "expiry_source": None,
        "diagnosis": None,
        "zitadel_created_at": None,
    }


def to_json(report: StatusReport) -> list[dict[str, Any]]:
    return [*(key_json(k) for k in report.keys), *(orphan_json(o) for o in report.orphans)]


def rotation_json(row: RotationSnapshot) -> dict[str, Any]:
    """One open or failed rotation, as ``keyd status`` prints it."""
    return {
        "old_key_id": row.old_key_id,
        "principal": row.principal,
        "state": row.state,
        "failed_step": row.failed_step,
        "last_error": scrub(row.last_error) if row.last_error else None,
        "failures": row.failures,
        "planned_at": _iso(row.planned_at),
        "updated_at": _iso(row.updated_at),
        "retire_after": _iso(row.retire_after),
    }


def unrotated_application_keys(report: StatusReport) -> list[str]:
    """Application keys still found: keyd never rotates them (ZITADEL's
    app-key API), it only alerts on their expiry."""
    return [
        k.row.key_id
        for k in report.keys
        if k.row.kind == vocab.KeyKind.APPLICATION and k.row.status != vocab.KeyStatus.MISSING
    ]


def status_document(report: StatusReport, rotations: Sequence[RotationSnapshot] = ()) -> dict[str, Any]:
    """The body of ``keyd status --json`` (schema ``STATUS_SCHEMA``): the
    instant evaluated, one object per key, then per broken file; the open
    and failed rotations (``rotations``) and the application keys keyd
    does not rotate, which the text output lists under "Rotations"."""
    return {
        "at": isoformat_z(report.at),
        "keys": to_json(report),
        "rotations": [rotation_json(r) for r in rotations],
        "unrotated_application_keys": unrotated_application_keys(report),
    }


# --- text --------------------------------------------------------------------


def _expires(view: ExpiryView, row: KeyRecord | None = None) -> str:
    if view.status == vocab.ExpiryStatus.UNKNOWN:
        return "unknown"
    text = "never" if view.status == vocab.ExpiryStatus.NEVER else render.expiry(view.expires_at)
    return (
        f"{text} (zitadel)" if row is not None and row.expiry_source == vocab.ExpirySource.ZITADEL else text
    )


def shown_status(key: KeyStatus) -> str:
    """The status people see: ``expiring`` for an active key inside the
    warning window, else the inventory status."""
    if key.status == vocab.KeyStatus.ACTIVE and key.expiry.status == vocab.ExpiryStatus.EXPIRING:
        return vocab.ExpiryStatus.EXPIRING
    if key.status == vocab.KeyStatus.REJECTED and key.row.diagnosis == "removed":
        return "rejected (removed)"
    return key.status


def _sources(row: KeyRecord) -> str:
    present = sorted({loc.source for loc in row.locations if loc.status == vocab.LocationStatus.PRESENT})
    if present:
        return ", ".join(present)
    return f"({', '.join(sorted({loc.source for loc in row.locations}))})"


def _probe(row: KeyRecord, at: datetime) -> str:
    if row.last_probe_at is None:
        return "never"
    return f"{row.last_probe_outcome or '?'} {render.ago(row.last_probe_at, at)}"


def render_text(
    report: StatusReport, summary: Sequence[str] = (), problem_lines: Sequence[str] | None = None
) -> str:
    """The table, then ``summary`` (the bounded listing's aggregates), then
    problems an operator should look at (``problem_lines``, default
    ``problems(report)``)."""
    zone = getattr(report.tz, "key", None) or str(report.tz)
    headers = [
        "KEY ID",
        "PRINCIPAL",
        "SOURCE",
        "EXPIRES (UTC)",
        f"LAST DAY ({zone})",
        "DAYS",
        "STATUS",
        "LAST PROBE",
    ]
    rows = [
        [
            k.row.key_id,
            k.row.principal,
            _sources(k.row),
            _expires(k.expiry, k.row),
            render.day(k.expiry.last_usable_day),
            render.number(k.expiry.days_left),
            shown_status(k),
            _probe(k.row, report.at),
        ]
        for k in report.keys
    ]
    if any(loc.kind for k in report.keys for loc in k.row.locations):  # a zitadel source
        headers.append("HELD")
        for row, key in zip(rows, report.keys, strict=True):
            row.append("yes" if key.row.held else "no")
    empty = "no key needs attention" if summary else 'no keys in the inventory (run "keyd scan")'
    parts = [render.table(headers, rows) if rows else empty]
    if summary:
        parts.append("\n".join(render.line(text) for text in summary))
    lines = list(problem_lines) if problem_lines is not None else problems(report)
    if lines:
        parts.append("\n".join(["Problems:", *(f"  {line}" for line in lines)]))
    return "\n\n".join(parts)


def problems(report: StatusReport) -> list[str]:
    """What an operator should look at: invalid files, permission warnings,
    probe errors, failing sources (one line each)."""
    lines: list[str] = []
    said: set[str] = set()  # a directory's warning is said once, not once per file in it
    for key in report.keys:
        for loc in key.row.locations:
            if loc.status == vocab.LocationStatus.INVALID:
                lines.append(f"{loc.source}: {loc.ref}: INVALID ({key.row.key_id}): {loc.error}")
            elif loc.status == vocab.LocationStatus.PRESENT:
                _warning_lines(loc.source, loc.ref, loc.warnings, said, lines)
        if key.row.last_error:
            lines.append(f"key {key.row.key_id}: {key.row.last_error}")
    for loc in report.orphans:
        lines.append(f"{loc.source}: {loc.ref}: INVALID: {loc.error}")
    lines.extend(_failing_sources(report.sources))
    return [render.line(text) for text in lines]


def _warning_lines(
    source: str, ref: str, warnings: Iterable[Exposure], said: set[str], lines: list[str]
) -> None:
    """A location's permission warnings, each said once (a directory's
    warning stands for every file in it)."""
    for warning in warnings:
        if warning.directory:
            text = f"{source}: warning: directory {warning.path} is {warning.readers}"
        else:
            text = f"{source}: {ref}: warning: {warning.message}"
        if text not in said:
            said.add(text)
            lines.append(text)


def _failing_sources(sources: Iterable[SourceState | SourceSnapshot]) -> list[str]:
    return [
        f"source {state.name}: failing ({state.consecutive_failures} scans in a row): {state.last_error}"
        for state in sources
        if state.consecutive_failures
    ]


def page_problems(
    keys: Sequence[KeyRecord], locations: ProblemLocations, sources: Sequence[SourceSnapshot]
) -> list[str]:
    """``status.problems`` from bounded reads: the invalid and warned
    locations ``keyd.store.page.location_problems`` read (with how many
    more there are), the last errors of the keys that need attention, the
    failing sources."""
    lines: list[str] = []
    for loc in locations.invalid:
        which = f" ({loc.key_id})" if loc.key_id else ""
        lines.append(f"{loc.source}: {loc.ref}: INVALID{which}: {loc.error}")
    if locations.invalid_total > len(locations.invalid):
        lines.append(f"… and {locations.invalid_total - len(locations.invalid):,} more invalid locations")
    said: set[str] = set()  # a directory's warning is said once, not once per file in it
    for loc in locations.warned:
        _warning_lines(loc.source, loc.ref, loc.warnings, said, lines)
    if locations.warned_total > len(locations.warned):
        lines.append(
            f"… {locations.warned_total:,} locations with a permission warning in all "
            f"(the first {len(locations.warned):,} by source and path are above)"
        )
    for key in keys:
        if key.last_error:
            lines.append(f"key {key.key_id}: {key.last_error}")
    lines.extend(_failing_sources(sources))
    return [render.line(text) for text in lines]


def load_attention(engine: Engine, config: Config, at: datetime) -> StatusReport:
    """The keys that need attention at ``at`` (``keyd.store.page.attention``),
    as ``load_status`` judges them: what ``keyd status`` lists for a big
    inventory, without reading every key."""
    warn_before = warn_window(config.alerts.thresholds)
    keys = page_store.attention(engine, at, warn_before)
    return build_status(InventorySnapshot(tuple(keys), (), ()), at, config.timezone, warn_before)


def summary_lines(
    counts: Mapping[str, int], windows: Sequence[page_store.ExpiryWindow], listed: int
) -> list[str]:
    """The aggregates under a bounded listing: keys by status, by expiry
    window, and how many are not listed."""
    total = sum(counts.values())
    by_status = ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items(), key=lambda i: (-i[1], i[0])))
    by_window = ", ".join(f"{w.label} {w.count:,}" for w in windows)
    return [
        f"{total:,} keys: {by_status}",
        f"by expiry (not missing): {by_window}",
        f"{total - listed:,} keys that need no attention are not listed "
        '("keyd status --all" lists every key, "keyd status --json" prints every key)',
    ]
