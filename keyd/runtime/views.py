"""The data behind the status page, read from the database per request.

``StatusViews`` implements what ``keyd.report.http`` serves on ``/``,
``/keys/{key_id}`` and ``/api/v1/status``: it reads the inventory
(``load_status``, the same builder as ``keyd status --json``), the verdict
(``judge``, the same as ``keyd check`` without a cycle: stored probe
results and the issuer outage the last round recorded), the token sinks
and the audit log, and hands frozen rows to ``keyd.report.pages``. It
takes the daemon's *current* services on every call, so a SIGHUP reload
(new thresholds, time zone) shows on the next page load. Read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keyd import __version__
from keyd.checks.expiry import warn_window
from keyd.report.pages import (
    PAGE_SIZE,
    PROBLEM_LIMIT,
    IndexPage,
    KeyPage,
    Listing,
    Overview,
    render_index,
    render_key,
    rotation_labels,
)
from keyd.report.status import STATUS_SCHEMA, build_status, load_status, page_problems, status_document
from keyd.runtime.check import judge
from keyd.runtime.wiring import Services
from keyd.store import alerts as alert_store
from keyd.store import page as page_store
from keyd.store import snapshot, views
from keyd.store.inventory import InventorySnapshot
from keyd.store.models import SourceState
from keyd.store.probes import probe_history
from keyd.store.rotations import unfinished
from keyd.store.snapshot import LocationProblem, SourceSnapshot
from keyd.vocab import KeyStatus

PROBE_HISTORY = 50


class StatusViews:
    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services

    def status(self) -> Any:
        """``keyd status --json``, as of now."""
        s = self._services()
        report = load_status(s.engine, s.config, s.clock.now())
        return {"schema": STATUS_SCHEMA, **status_document(report, unfinished(s.engine))}

    def index(self, query: Mapping[str, str] | None = None) -> str:
        """``GET /``, bounded at any inventory size (README "Status page"):
        aggregates, every key that needs attention, one page of the
        listing (``query``: ``after``, ``principal``, ``key``)."""
        s = self._services()
        now = s.clock.now()
        engine = s.engine
        config = s.config
        query = query or {}
        warn = warn_window(config.alerts.thresholds)
        with alert_store.transaction(engine) as session:
            outage = alert_store.issuer_outage(session)
        by_status = page_store.status_counts(engine)
        urgent = page_store.attention(engine, now, warn)
        listed, next_after = page_store.listing(
            engine,
            after=query.get("after"),
            principal=query.get("principal"),
            key_prefix=query.get("key"),
            limit=PAGE_SIZE,
        )
        locations = page_store.location_problems(engine, PROBLEM_LIMIT)
        windows = page_store.expiry_windows(engine, now, config.alerts.thresholds, by_status)
        sources = snapshot.sources(engine)
        judged = [k for k in urgent if k.status not in (KeyStatus.MISSING, KeyStatus.UNHELD)]
        missing = by_status.get(KeyStatus.MISSING, 0)
        unheld = by_status.get(KeyStatus.UNHELD, 0)
        verdict = judge(
            config,
            now,
            judged,
            [
                LocationProblem(loc.source, loc.ref, loc.status, loc.error)
                for loc in locations.invalid
                if loc.key_id is None
            ],
            sources,
            issuer_down_since=outage,
            rotations=unfinished(engine),
            tokens=page_store.token_problems(engine, now),
            counted={
                "keys": sum(by_status.values()) - missing - unheld - len(judged),
                "missing": missing,
                "unheld": unheld,
            },
        )
        shown = {k.key_id: k for k in [*urgent, *listed]}
        orphans = tuple(loc for loc in locations.invalid if loc.key_id is None)
        states = tuple(_state(src) for src in sources)
        report = build_status(
            InventorySnapshot(tuple(shown.values()), orphans, states), now, config.timezone, warn
        )
        statuses = {k.row.key_id: k for k in report.keys}
        page = IndexPage(
            report=report,
            verdict=verdict.status,
            summary=verdict.summary(),
            thresholds=tuple(config.alerts.thresholds),
            tokens={t.key_id: t for t in page_store.tokens_for(engine, [k.pk for k in shown.values()])},
            events=views.recent_events(engine),
            version=__version__,
            rotations=rotation_labels(page_store.rotations_for(engine, shown)),
            attention=[statuses[k.key_id] for k in urgent],
            listed=[statuses[k.key_id] for k in listed],
            listing=Listing(query.get("after"), query.get("principal"), query.get("key"), next_after),
            overview=Overview(by_status, windows),
            problem_lines=page_problems(urgent, locations, sources),
        )
        return render_index(page)

    def key(self, key_id: str) -> str | None:
        """One key's page, or None when no key has this id."""
        s = self._services()
        now = s.clock.now()
        engine = s.engine
        report = load_status(engine, s.config, now, key_id=key_id)
        pk = views.key_pk(engine, key_id)
        if not report.keys or pk is None:
            return None
        found = report.keys[0]
        zone = getattr(s.config.timezone, "key", None) or str(s.config.timezone)
        return render_key(
            KeyPage(
                key=found,
                at=now,
                zone=zone,
                probes=probe_history(engine, pk, limit=PROBE_HISTORY),
                alerts=views.alerts_for(engine, pk, key_id),
                events=views.recent_events(engine, key_id=key_id),
                sink=views.sink_for(engine, pk),
                version=__version__,
                rotation=views.rotation_of(engine, key_id),
            )
        )


def _state(src: SourceSnapshot) -> SourceState:
    return SourceState(
        name=src.name,
        last_attempt_at=src.last_attempt_at,
        last_success_at=src.last_success_at,
        last_error=src.last_error,
        consecutive_failures=src.consecutive_failures,
        error_count=src.error_count,
    )
