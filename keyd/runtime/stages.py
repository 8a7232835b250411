"""The cycle's stages, composed from the stage modules (docs/architecture.md §1):

scan → evaluate (alert ladder) → probe → rotate → tokens (write-back) → outbox
(``keyd check`` sends decided mail first and again after the network
stages, ``cycle_stages``),
plus ``prune`` (daemon only). Each adapter takes ``Services``, does its
stage in its own transaction(s) and returns that stage's report. Stages
whose feature is not configured are left out (no issuer: no probe; no
``[tokens]``: no write-back). ``probe``, ``tokens`` and ``outbox`` act
outside the database (a probe mints a real token at the issuer, which
records it; write-back writes Vault; the outbox sends mail), so a dry run
asks their ``plan`` instead (``cycle.py``); plans only read the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Final

from keyd.actions.alerts import EvaluationReport, evaluate_alerts
from keyd.actions.alerts import evaluate_chunk as alert_chunk
from keyd.actions.deliver import DrainReport, drain_outbox, shown_recipient
from keyd.actions.probe import plan_probes, probe_due
from keyd.actions.rotate import RotationReport, plan_rotations, rotate_due
from keyd.actions.tokens import TokenReport, plan_lines, refresh_tokens
from keyd.checks.probe import ProbeReport
from keyd.inventory.scan import ScanReport, scan_all
from keyd.inventory.watched import WatchedScans
from keyd.report.mail import render_message
from keyd.runtime.cycle import Stage
from keyd.runtime.wiring import Services
from keyd.store import alerts as alert_store
from keyd.store import probes as probe_store
from keyd.store.engine import session_scope
from keyd.store.prune import PruneReport, prune_history

log = logging.getLogger(__name__)

PROBE_HISTORY: Final = timedelta(days=30)
EVENT_HISTORY: Final = timedelta(days=365)


def _base_stages(services: Services) -> list[Stage]:
    """Each stage once: scan, evaluate, probe, tokens, outbox."""
    stages = [Stage("scan", scan), Stage("evaluate", evaluate)]
    if services.probe is not None:
        stages.append(Stage("probe", probe, side_effects=True, plan=probe_plan))
    if services.rotation is not None:
        stages.append(Stage("rotate", rotate, side_effects=True, plan=rotate_plan))
    if services.tokens is not None:
        stages.append(Stage("tokens", tokens, side_effects=True, plan=tokens_plan))
    stages.append(Stage("outbox", outbox, side_effects=True, plan=outbox_plan))
    # last: bounded history in every mode (a dry run skips it: VACUUM is outside its sandbox)
    stages.append(Stage("prune", prune, side_effects=True, plan=prune_plan))
    return stages


def cycle_stages(services: Services, *, dry_run: bool = False) -> list[Stage]:
    """The stages of one full cycle (``keyd check``), in order. Alerts
    already decided are sent before the issuer is contacted (a slow issuer
    never holds them back), and what the probes found (a rejected key) is
    decided and sent in the same run: scan, evaluate, outbox, then the
    network stages (probe, rotate, tokens), then ``evaluate-probed``,
    ``outbox-probed`` and prune. A dry run plans each stage once (nothing
    is probed, so nothing new is decided). In digest mode (``alerts.digest``:
    one mail per run) the early outbox is left out, so the one digest at the
    end lists what both evaluations decided."""
    stages = _base_stages(services)
    by_name = {s.name: s for s in stages}
    network = [s for s in stages if s.name not in ("scan", "evaluate", "outbox", "prune")]
    if dry_run or not network:
        return stages
    early = [] if services.config.alerts.digest else [by_name["outbox"]]
    return [
        by_name["scan"],
        by_name["evaluate"],
        *early,
        *network,
        Stage("evaluate-probed", evaluate),
        Stage("outbox-probed", outbox, side_effects=True, plan=outbox_plan),
        by_name["prune"],
    ]


def daemon_stages(services: Services) -> list[Stage]:
    """The daemon's ticks: each stage once (history pruning included); its
    scan reads a zitadel source only when that source's interval has passed.
    (The daemon's evaluate tick decides what the probe tick found.) The
    evaluate and probe ticks run in chunks: a round with much due work is
    several ticks, each bounded, with the other ticks' work in between."""
    daemon = {"scan": daemon_scan, "evaluate": evaluate_chunk, "probe": probe_chunk}
    return [replace(s, run=daemon[s.name]) if s.name in daemon else s for s in _base_stages(services)]


def scan(services: Services, *, due_only: bool = False, watches: WatchedScans | None = None) -> ScanReport:
    report = scan_all(
        services.config,
        services.engine,
        services.clock,
        services.vault,
        key_apis=services.key_apis,
        due_only=due_only,
        watches=watches,
    )
    log.info("scan: %s", report.summary())
    return report


def daemon_scan(services: Services) -> ScanReport:
    """The daemon's scan tick: zitadel sources when due, and directory
    sources as their inotify watchers say (``keyd.inventory.watched``:
    untouched ones are not read at all; a full walk every
    ``daemon.full_scan_interval``). The watchers live as long as
    ``services``: a reload starts them afresh, with a full scan."""
    if services.watches is None:
        services.watches = WatchedScans(services.config.daemon.full_scan_interval)
    cpu = time.thread_time()
    report = scan(services, due_only=True, watches=services.watches)
    services.watches.tick(report.sources, time.thread_time() - cpu)
    return report


def evaluate(services: Services) -> int:
    """Decide due alerts (one transaction); returns how many are new."""
    with session_scope(services.engine) as session:
        return len(evaluate_alerts(session, services.config, services.clock.now()))


def evaluate_chunk(services: Services) -> EvaluationReport:
    """The daemon's evaluate tick: one batch of due principals in its own
    transaction (``actions.alerts.evaluate_chunk``); ``more`` when keys are
    still due, and the daemon runs the next chunk after the queued ticks."""
    with session_scope(services.engine) as session:
        return alert_chunk(session, services.config, services.clock.now())


def probe(services: Services) -> ProbeReport:
    """A whole round (``keyd check``)."""
    return _probe(services, None)


def probe_chunk(services: Services) -> ProbeReport:
    """The daemon's probe tick: at most one slice of the work thread
    (``daemon.probe_slice`` at the rate limit); ``more`` when keys are still
    due, and then how many (one indexed COUNT, only when a chunk was full)."""
    assert services.probe is not None
    slice_seconds = services.config.daemon.probe_slice.total_seconds()
    report = _probe(services, services.probe.policy.chunk(slice_seconds))
    if report.more:
        report.remaining = probe_store.due_preview(services.engine, services.clock.now(), limit=0)[0]
        report.more = report.remaining > 0  # a chunk that took the last due keys ends the round
    return report


def _probe(services: Services, limit: int | None) -> ProbeReport:
    assert services.probe is not None
    report = probe_due(services.engine, services.probe, services.clock.now(), limit=limit)
    if services.metrics is not None:
        for result in report.results:
            seconds = result.latency_ms / 1000 if result.latency_ms is not None else None
            services.metrics.observe_probe(result.outcome, seconds)
    return report


def probe_plan(services: Services) -> Sequence[str]:
    """The due keys a probe round would contact the issuer for (none is)."""
    assert services.config.issuer is not None
    return plan_probes(services.engine, services.config.issuer.url, services.clock.now())


def rotate(services: Services) -> RotationReport:
    """Plan and advance rotations; when a key was published this round,
    rescan at once so probes and token write-back use the new key now
    (its locations no longer hold the old one)."""
    assert services.rotation is not None
    now = services.clock.now()
    report = rotate_due(services.engine, services.rotation, now)
    if any(r.published_at is not None and r.published_at >= now for r in report.rows):
        scan(services)
    return report


def rotate_plan(services: Services) -> Sequence[str]:
    """The rotations a round would start or continue (nothing reaches ZITADEL)."""
    assert services.rotation is not None
    return plan_rotations(services.engine, services.rotation.policy, services.clock.now())


def tokens(services: Services) -> TokenReport:
    assert services.tokens is not None
    return refresh_tokens(services.engine, services.tokens, services.clock.now())


def tokens_plan(services: Services) -> Sequence[str]:
    """The sinks write-back would create or refresh; ``dry_run=True``
    neither mints (no issuer request) nor writes Vault or the database."""
    assert services.tokens is not None
    report = refresh_tokens(services.engine, services.tokens, services.clock.now(), dry_run=True)
    return plan_lines(report)


def outbox(services: Services) -> DrainReport:
    return drain_outbox(
        services.engine,
        services.config,
        services.clock,
        services.smtp_factory,
        services.webhook,
        render=render_message,
    )


def outbox_plan(services: Services) -> Sequence[str]:
    with alert_store.transaction(services.engine) as session:
        due = alert_store.due_deliveries(session, services.clock.now())
    return [f"would send {item.channel} to {shown_recipient(item)}: {item.alert.subject}" for item in due]


def prune_plan(services: Services) -> Sequence[str]:
    """Housekeeping has nothing to show in a dry run: it lists nothing."""
    return []


def prune(services: Services) -> PruneReport:
    now = services.clock.now()
    report = prune_history(
        services.engine, probes_before=now - PROBE_HISTORY, events_before=now - EVENT_HISTORY
    )
    if report.probes or report.events:
        log.info(
            "prune: deleted %d probe rows older than %s and %d events older than %s",
            report.probes,
            PROBE_HISTORY,
            report.events,
            EVENT_HISTORY,
        )
    return report
