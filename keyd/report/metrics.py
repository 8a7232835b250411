"""Prometheus metrics, read from the database at scrape time.

``KeydMetrics`` owns its own ``CollectorRegistry`` (never the global one,
so tests and two daemons in one process cannot collide). The inventory
metrics come from a custom collector that queries ``keyd.store.snapshot``
on each scrape, so they always show what the database says, on leader and
standby alike. A row that cannot be turned into a sample is logged and
skipped; a database that cannot be reached yields ``keyd_db_up 0`` and
the in-process metrics. Labels carry key ids, principals, source names and
Vault paths, never key material or tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from keyd.store import snapshot
from keyd.store.snapshot import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")
KEY_STATUSES: Final = ("active", "expired", "missing", "invalid", "rejected")
PROBE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class KeydMetrics:
    """Registry + collectors for one daemon (or one ``keyd check``).

    ``leader()`` says True/False/None (None: not known yet);
    ``last_tick()`` is when the scheduler last finished a tick.
    """

    def __init__(self, engine: Engine, *, version: str,
                 leader: Callable[[], bool | None] = lambda: None,
                 last_tick: Callable[[], datetime | None] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.probe_duration = Histogram(
            "keyd_probe_duration_seconds", "Duration of validation probes (token requests)",
            buckets=PROBE_BUCKETS, registry=self.registry)
        self.registry.register(InventoryCollector(engine, version, leader, last_tick))

    def observe_probe(self, seconds: float) -> None:
        self.probe_duration.observe(max(seconds, 0.0))

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class InventoryCollector(Collector):
    def __init__(self, engine: Engine, version: str, leader: Callable[[], bool | None],
                 last_tick: Callable[[], datetime | None]) -> None:
        self._engine = engine
        self._version = version
        self._leader = leader
        self._last_tick = last_tick

    def collect(self) -> Iterable[Metric]:
        build = InfoMetricFamily("keyd_build", "keyd build information")
        build.add_metric([], {"version": self._version})
        yield build
        yield from self._runtime()
        db_up = GaugeMetricFamily("keyd_db_up", "1 if the inventory database answered this scrape")
        families: list[Metric] = []
        try:
            families = [*_key_families(snapshot.keys(self._engine)),
                        _token_family(snapshot.tokens(self._engine)),
                        _source_family(snapshot.sources(self._engine)),
                        GaugeMetricFamily("keyd_alerts_pending", "Alert deliveries not yet sent",
                                          value=snapshot.open_deliveries(self._engine))]
        except Exception as exc:  # the scrape must answer even without a database
            log.error("metrics: cannot read the inventory: %s", exc)
            db_up.add_metric([], 0)
        else:
            db_up.add_metric([], 1)
        yield db_up
        yield from families

    def _runtime(self) -> Iterator[Metric]:
        leader = self._leader()
        if leader is not None:
            yield GaugeMetricFamily("keyd_leader", "1 if this daemon is the active leader",
                                    value=1 if leader else 0)
        tick = self._last_tick()
        if tick is not None:
            yield GaugeMetricFamily("keyd_last_tick_timestamp_seconds",
                                    "When the scheduler last finished a tick",
                                    value=tick.timestamp())


def _key_families(rows: list[snapshot.KeySnapshot]) -> list[Metric]:
    labels = ["key_id", "principal"]
    expires = GaugeMetricFamily("keyd_key_expiration_timestamp_seconds",
                                "When the key expires (absent when unknown)", labels=labels)
    last_ok = GaugeMetricFamily("keyd_key_last_probe_success_timestamp_seconds",
                                "Last successful validation probe", labels=labels)
    status = GaugeMetricFamily("keyd_key_status", "1 for the key's current status",
                               labels=[*labels, "status"])
    for row in _each(rows, "key"):
        ids = [row.key_id, row.principal]
        if row.expires_at is not None:
            expires.add_metric(ids, row.expires_at.timestamp())
        if row.last_ok_at is not None:
            last_ok.add_metric(ids, row.last_ok_at.timestamp())
        for name in {*KEY_STATUSES, row.status}:
            status.add_metric([*ids, name], 1 if name == row.status else 0)
    return [expires, last_ok, status]


def _token_family(rows: list[snapshot.TokenSnapshot]) -> Metric:
    family = GaugeMetricFamily("keyd_token_expiration_timestamp_seconds",
                               "When the access token written back to Vault expires",
                               labels=["key_id", "principal", "sink"])
    for row in _each(rows, "token"):
        if row.expires_at is not None:
            family.add_metric([row.key_id, row.principal, row.sink], row.expires_at.timestamp())
    return family


def _source_family(rows: list[snapshot.SourceSnapshot]) -> Metric:
    family = CounterMetricFamily("keyd_source_errors", "Failed scans of each source",
                                 labels=["source"])
    for row in _each(rows, "source"):
        family.add_metric([row.name], row.error_count)
    return family


def _each(rows: list[T], what: str) -> Iterator[T]:
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
