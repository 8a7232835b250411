"""``keyd status``: the inventory as seen at one instant.

``build_status(snapshot, at, tz)`` turns the store's frozen rows into
``StatusReport``; ``to_json`` gives the stable ``--json`` schema and
``render_text`` the table. Pure: the CLI reads the snapshot and the clock.

JSON (``status_document``: schema ``keyd.status/1``, docs/json.md)
``{"at", "keys": [...]}``, one object per key, then one per invalid
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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Final

from keyd import vocab
from keyd.checks.expiry import DEFAULT_WARN_BEFORE, ExpiryView, evaluate
from keyd.config import Config
from keyd.exposure import exposure_text
from keyd.report import render
from keyd.store.inventory import Engine, InventorySnapshot, inventory_snapshot
from keyd.store.keys import KeyRecord, Location
from keyd.store.models import SourceState
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
    warn_before = max(config.alerts.thresholds, default=DEFAULT_WARN_BEFORE)
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


def status_document(report: StatusReport) -> dict[str, Any]:
    """The body of ``keyd status --json`` (schema ``STATUS_SCHEMA``): the
    instant evaluated and one object per key, then per broken file."""
    return {"at": isoformat_z(report.at), "keys": to_json(report)}


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


def render_text(report: StatusReport) -> str:
    """The table, then problems an operator should look at."""
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
    parts = [render.table(headers, rows) if rows else 'no keys in the inventory (run "keyd scan")']
    lines = problems(report)
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
                for warning in loc.warnings:
                    if warning.directory:
                        text = f"{loc.source}: warning: directory {warning.path} is {warning.readers}"
                    else:
                        text = f"{loc.source}: {loc.ref}: warning: {warning.message}"
                    if text not in said:
                        said.add(text)
                        lines.append(text)
        if key.row.last_error:
            lines.append(f"key {key.row.key_id}: {key.row.last_error}")
    for loc in report.orphans:
        lines.append(f"{loc.source}: {loc.ref}: INVALID: {loc.error}")
    for state in report.sources:
        if state.consecutive_failures:
            lines.append(
                f"source {state.name}: failing ({state.consecutive_failures} scans "
                f"in a row): {state.last_error}"
            )
    return [render.line(text) for text in lines]
