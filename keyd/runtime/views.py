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

from collections.abc import Callable
from typing import Any

from keyd import __version__
from keyd.report.pages import IndexPage, KeyPage, render_index, render_key, rotation_labels
from keyd.report.status import STATUS_SCHEMA, load_status, status_document
from keyd.runtime.check import judge
from keyd.runtime.wiring import Services
from keyd.store import alerts as alert_store
from keyd.store import rotations, snapshot, views
from keyd.store.probes import probe_history

PROBE_HISTORY = 50


class StatusViews:
    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services

    def status(self) -> Any:
        """``keyd status --json``, as of now."""
        s = self._services()
        return {"schema": STATUS_SCHEMA, **status_document(load_status(s.engine, s.config, s.clock.now()))}

    def index(self) -> str:
        s = self._services()
        now = s.clock.now()
        engine = s.engine
        with alert_store.transaction(engine) as session:
            outage = alert_store.issuer_outage(session)
        verdict = judge(
            s.config,
            now,
            snapshot.keys(engine),
            snapshot.location_problems(engine),
            snapshot.sources(engine),
            issuer_down_since=outage,
        )
        page = IndexPage(
            report=load_status(engine, s.config, now),
            verdict=verdict.status,
            summary=verdict.summary(),
            thresholds=tuple(s.config.alerts.thresholds),
            tokens={t.key_id: t for t in snapshot.tokens(engine)},
            events=views.recent_events(engine),
            version=__version__,
            rotations=rotation_labels(rotations.all_rotations(engine)),
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
