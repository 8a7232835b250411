"""Prometheus metrics from a snapshot the daemon refreshes, not the scrape.

``KeydMetrics`` owns its own ``CollectorRegistry`` (never the global one,
so tests and two daemons in one process cannot collide). The inventory
part of ``/metrics`` is built by ``refresh()``, which the daemon calls on
its own tick: it first asks the database for a cheap change marker
(``keyd.store.snapshot.change_marker``) and rebuilds and renders the
inventory families only when something changed. A scrape then returns
the rendered bytes plus the few in-process series (leader, last tick,
probe latency): no SQL, whatever the size of the inventory. Before the
first refresh a scrape refreshes once itself (``keyd check``, tests).

Cardinality: per key only what alerting needs, by default two series
(``keyd_key_expiration_timestamp_seconds`` and ``keyd_key_status_code``);
everything else is an aggregate. ``per_key=True`` (``http.metrics_per_key``)
adds the per-key detail: last probe success, the one-hot
``keyd_key_status{status}`` and each token sink's expiry.

A row that cannot be turned into a sample is logged and skipped; a
database that cannot be reached yields ``keyd_db_up 0`` and the in-process
metrics. Labels carry key ids, principals, source names and Vault paths,
never key material or tokens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Final, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from keyd.store import rotations as rotation_store
from keyd.store import snapshot
from keyd.store.keys import KeyRecord
from keyd.store.snapshot import Engine
from keyd.vocab import KeyStatus, LocationStatus, ProbeOutcome, RotationState, SinkState

log = logging.getLogger(__name__)

T = TypeVar("T")
KEY_STATUSES: Final = tuple(KeyStatus)
#: ``keyd_key_status_code``: 0 is the only healthy value (docs/daemon.md).
STATUS_CODES: Final[dict[str, int]] = {
    KeyStatus.ACTIVE: 0,
    KeyStatus.EXPIRED: 1,
    KeyStatus.REJECTED: 2,
    KeyStatus.INVALID: 3,
    KeyStatus.MISSING: 4,
    KeyStatus.UNHELD: 5,
}
UNKNOWN_STATUS_CODE: Final = 9  # a status a newer keyd wrote
PROBE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LABELS: Final = ["key_id", "principal"]
OPENMETRICS: Final = "application/openmetrics-text"
EOF_LINE: Final = b"# EOF\n"
SERIES_CHUNK: Final = 1000  # keys per rendering of the default per-key series


@dataclass(frozen=True)
class _Rendered:
    """A per-key family kept as its rendered sample lines, not as one
    ``Sample`` (a tuple and a label dict) per series: ``header`` is the
    family without samples (its ``# HELP``/``# TYPE`` in either format),
    ``lines`` what the text encoder wrote for the samples, which the
    OpenMetrics encoder writes identically for a gauge (same escaping,
    same number format, no timestamps)."""

    header: Metric
    lines: bytes


@dataclass(frozen=True)
class _Snapshot:
    marker: tuple[object, ...] | None  # None: the database did not answer
    families: tuple[Metric, ...]  # aggregates (and the per-key detail, when asked for)
    per_key: tuple[_Rendered, ...]  # the default per-key series, pre-rendered
    bodies: dict[str, bytes]  # by content type: rendered once per format, on first use


class KeydMetrics:
    """Registry + collectors for one daemon (or one ``keyd check``).

    ``leader()`` says True/False/None (None: not known yet);
    ``last_tick()`` is when the scheduler last finished a tick.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        version: str,
        leader: Callable[[], bool | None] = lambda: None,
        last_tick: Callable[[], datetime | None] = lambda: None,
        per_key: bool = False,
    ) -> None:
        self._engine = engine
        self.per_key = per_key
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.probe_duration = Histogram(
            "keyd_probe_duration_seconds",
            "Duration of validation probes (token requests)",
            buckets=PROBE_BUCKETS,
            registry=self.registry,
        )
        self.probes = Counter(
            "keyd_probes", "Validation probes by outcome (this process)", ["outcome"], registry=self.registry
        )
        for outcome in ProbeOutcome:  # every outcome from 0, so rate() sees the first one
            self.probes.labels(outcome)
        for standard in (ProcessCollector, PlatformCollector, GCCollector):
            standard(registry=self.registry)  # process_*, python_info, python_gc_*
        self.registry.register(_RuntimeCollector(version, leader, last_tick))

    def observe_probe(self, outcome: str, seconds: float | None) -> None:
        """One probe result: counted by outcome; its latency when it has one."""
        self.probes.labels(outcome).inc()
        if seconds is not None:
            self.probe_duration.observe(max(seconds, 0.0))

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild the inventory snapshot if the database changed since the
        last one (or ``force``); True if it was rebuilt. Never raises for a
        database problem: the snapshot then says ``keyd_db_up 0``."""
        with self._lock:
            previous = self._snapshot
            try:
                marker: tuple[object, ...] | None = snapshot.change_marker(self._engine)
                if not force and previous is not None and previous.marker == marker:
                    return False
                per_key = _key_series(snapshot.key_series(self._engine))
                families = _inventory(self._engine, self.per_key)
            except Exception as exc:  # the scrape must answer even without a database
                log.error("metrics: cannot read the inventory: %s", exc)
                marker, families, per_key = None, [], ()
            db_up = GaugeMetricFamily(
                "keyd_db_up",
                "1 if the inventory database answered the last refresh",
                value=0 if marker is None else 1,
            )
            self._snapshot = _Snapshot(marker, (db_up, *families), per_key, {})
            return True

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type for an ``Accept`` header,
        as prometheus-client negotiates it (OpenMetrics when asked, else the
        text format): the in-process series rendered now, the inventory as
        rendered once per format for the current snapshot."""
        encoder, content_type = choose_encoder(accept or "")
        current = self._current()
        with self._lock:
            inventory = current.bodies.get(content_type)
            if inventory is None:
                inventory = current.bodies[content_type] = _render(current, encoder, content_type)
        live = encoder(self.registry)
        if content_type.startswith(OPENMETRICS):  # one "# EOF", at the very end
            return live.removesuffix(EOF_LINE) + inventory.removesuffix(EOF_LINE) + EOF_LINE, content_type
        return live + inventory, content_type

    def _current(self) -> _Snapshot:
        current = self._snapshot
        if current is None:
            self.refresh()
            current = self._snapshot
        assert current is not None
        return current


class _RuntimeCollector(Collector):
    """What this process knows, read at scrape time (no database)."""

    def __init__(
        self, version: str, leader: Callable[[], bool | None], last_tick: Callable[[], datetime | None]
    ) -> None:
        self._version = version
        self._leader = leader
        self._last_tick = last_tick

    def collect(self) -> Iterable[Metric]:
        build = InfoMetricFamily("keyd_build", "keyd build information")
        build.add_metric([], {"version": self._version})
        yield build
        leader = self._leader()
        if leader is not None:
            yield GaugeMetricFamily(
                "keyd_leader", "1 if this daemon is the active leader", value=1 if leader else 0
            )
        tick = self._last_tick()
        if tick is not None:
            yield GaugeMetricFamily(
                "keyd_last_tick_timestamp_seconds",
                "When the scheduler last finished a tick",
                value=tick.timestamp(),
            )


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def _encode(families: Iterable[Metric], encoder: Callable[[CollectorRegistry], bytes]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return encoder(registry)


def _render(current: _Snapshot, encoder: Callable[[CollectorRegistry], bytes], content_type: str) -> bytes:
    """The inventory part of a body: the families, then each pre-rendered
    per-key family (its header in this format, then its sample lines)."""
    parts = [_encode(current.families, encoder)]
    for family in current.per_key:
        parts += [_encode([family.header], encoder), family.lines]
    if content_type.startswith(OPENMETRICS):  # one "# EOF", at the very end
        return b"".join(p.removesuffix(EOF_LINE) for p in parts) + EOF_LINE
    return b"".join(parts)


def _key_series(rows: Iterable[Any]) -> tuple[_Rendered, ...]:
    """The default per-key families, rendered ``SERIES_CHUNK`` keys at a
    time: at most one chunk of ``Sample`` objects exists at once."""
    headers = _key_families(())
    lines: list[list[bytes]] = [[] for _ in headers]
    safe = _each(rows, "key")
    while chunk := list(islice(safe, SERIES_CHUNK)):
        for out, family in zip(lines, _key_families(chunk), strict=True):
            out.append(_encode([family], generate_latest).split(b"\n", 2)[2])  # minus HELP, TYPE
    return tuple(_Rendered(h, b"".join(out)) for h, out in zip(headers, lines, strict=True))


def _inventory(engine: Engine, per_key: bool) -> list[Metric]:
    families = [
        *_aggregate_families(snapshot.aggregates(engine)),
        _source_family(snapshot.sources(engine)),
        *_rotation_families(engine),
    ]
    if per_key:
        families += [*_key_detail(snapshot.keys(engine)), *_token_families(snapshot.tokens(engine))]
    return families


def _key_families(rows: Iterable[Any]) -> list[Metric]:
    expires = GaugeMetricFamily(
        "keyd_key_expiration_timestamp_seconds", "When the key expires (absent when unknown)", labels=LABELS
    )
    code = GaugeMetricFamily(
        "keyd_key_status_code",
        "The key's status: 0 active, 1 expired, 2 rejected, 3 invalid, "
        "4 missing, 5 unheld (listed by ZITADEL, held nowhere)",
        labels=LABELS,
    )
    for row in rows:  # already checked by ``_each``
        ids = [row.key_id, row.principal]
        if row.expires_at is not None:
            expires.add_metric(ids, row.expires_at.timestamp())
        code.add_metric(ids, STATUS_CODES.get(row.status, UNKNOWN_STATUS_CODE))
    return [expires, code]


def _aggregate_families(agg: snapshot.Aggregates) -> list[Metric]:
    keys = GaugeMetricFamily("keyd_keys", "Keys by status", labels=["status"])
    for status in sorted({*KEY_STATUSES, *agg.keys_by_status}):
        keys.add_metric([status], agg.keys_by_status.get(status, 0))
    tokens = GaugeMetricFamily("keyd_tokens", "Token write-back sinks by state", labels=["state"])
    for state in sorted({*SinkState, *agg.tokens_by_state}):
        tokens.add_metric([state], agg.tokens_by_state.get(state, 0))
    out: list[Metric] = [keys, tokens]
    if agg.oldest_probe_ok is not None:
        out.append(
            GaugeMetricFamily(
                "keyd_key_last_probe_success_oldest_timestamp_seconds",
                "The oldest last successful probe among active keys",
                value=agg.oldest_probe_ok.timestamp(),
            )
        )
    out.append(
        GaugeMetricFamily(
            "keyd_keys_without_probe_success", "Active keys no probe has proven yet", value=agg.never_probe_ok
        )
    )
    if agg.earliest_token_expiry is not None:
        out.append(
            GaugeMetricFamily(
                "keyd_token_expiration_earliest_timestamp_seconds",
                "When the first written-back access token expires",
                value=agg.earliest_token_expiry.timestamp(),
            )
        )
    out.append(
        GaugeMetricFamily(
            "keyd_alert_deliveries_unsent",
            "Alert deliveries (mail, webhook) not sent yet: pending or failed and retrying",
            value=agg.open_deliveries,
        )
    )
    out.append(_location_family(agg.locations))
    return out


def _location_family(counts: dict[tuple[str, str], int]) -> Metric:
    """Key-file locations by source and status; ``status="invalid"`` counts
    the files and secrets that cannot be read or parsed (the x509
    exporter's read-errors idea), per source, so a broken directory shows."""
    family = GaugeMetricFamily(
        "keyd_locations",
        "Key-file locations by source and status (invalid: unreadable or unparsable)",
        labels=["source", "status"],
    )
    sources = sorted({source for source, _ in counts})
    for source in sources:
        for status in sorted({*LocationStatus, *(st for src, st in counts if src == source)}):
            family.add_metric([source, status], counts.get((source, status), 0))
    return family


def _key_detail(rows: Iterable[KeyRecord]) -> list[Metric]:
    last_ok = GaugeMetricFamily(
        "keyd_key_last_probe_success_timestamp_seconds", "Last successful validation probe", labels=LABELS
    )
    status = GaugeMetricFamily(
        "keyd_key_status", "1 for the key's current status", labels=[*LABELS, "status"]
    )
    for row in _each(rows, "key"):
        ids = [row.key_id, row.principal]
        if row.last_ok_at is not None:
            last_ok.add_metric(ids, row.last_ok_at.timestamp())
        for name in {*KEY_STATUSES, row.status}:
            status.add_metric([*ids, name], 1 if name == row.status else 0)
    return [last_ok, status]


def _token_families(rows: list[snapshot.TokenSnapshot]) -> list[Metric]:
    labels = ["key_id", "principal", "sink"]
    expires = GaugeMetricFamily(
        "keyd_token_expiration_timestamp_seconds",
        "When the access token written back to Vault expires",
        labels=labels,
    )
    state = GaugeMetricFamily(
        "keyd_token_state", "1 for the token sink's current state", labels=[*labels, "state"]
    )
    for row in _each(rows, "token"):
        ids = [row.key_id, row.principal, row.sink]
        if row.expires_at is not None:
            expires.add_metric(ids, row.expires_at.timestamp())
        for name in sorted({*SinkState, row.state}):
            state.add_metric([*ids, name], 1 if name == row.state else 0)
    return [expires, state]


def _source_family(rows: list[snapshot.SourceSnapshot]) -> Metric:
    family = CounterMetricFamily("keyd_source_errors", "Failed scans of each source", labels=["source"])
    for row in _each(rows, "source"):
        family.add_metric([row.name], row.error_count)
    return family


def _rotation_families(engine: Engine) -> list[Metric]:
    """Rotations: outcomes (a counter from the append-only events), how many
    are unfinished in each state, and when each unfinished or failed one was
    planned (its age is ``time() -`` that; few series: finished ones drop out)."""
    total = CounterMetricFamily("keyd_rotations", "Rotations that reached an outcome", labels=["outcome"])
    for outcome, n in rotation_store.outcome_counts(engine).items():
        total.add_metric([outcome], n)
    rows = rotation_store.unfinished(engine)
    by_state = GaugeMetricFamily(
        "keyd_rotation_state", "Unfinished or failed rotations by state", labels=["state"]
    )
    counts: dict[str, int] = {state: 0 for state in rotation_store.STATES if state != RotationState.RETIRED}
    started = GaugeMetricFamily(
        "keyd_rotation_started_timestamp_seconds",
        "When each unfinished or failed rotation was planned",
        labels=["key_id", "principal", "state"],
    )
    for row in _each(rows, "rotation"):
        counts[row.state] = counts.get(row.state, 0) + 1
        started.add_metric([row.old_key_id, row.principal, row.state], row.planned_at.timestamp())
    for state, n in counts.items():
        by_state.add_metric([state], n)
    return [total, by_state, started]


def _each(rows: Iterable[T], what: str) -> Iterator[T]:
    """The rows whose values can become samples; others are logged and
    skipped (rows that cannot even be decoded never get here: the snapshot
    skips them)."""
    for row in rows:
        if _safe(row, what):
            yield row


def _safe(row: object, what: str) -> bool:
    """Pre-check that a row's values can become samples (finite numbers,
    string labels), so one odd row cannot abort the whole family."""
    try:
        for name in ("expires_at", "last_ok_at"):
            value = getattr(row, name, None)
            if value is not None:
                value.timestamp()
        for name in ("key_id", "principal", "name", "sink", "status"):
            value = getattr(row, name, "")
            if not isinstance(value, str):
                raise TypeError(f"{name} is {type(value).__name__}, not text")
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        log.error("metrics: skipping %s row %r: %s", what, getattr(row, "key_id", row), exc)
        return False
    return True
