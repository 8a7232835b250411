"""One full cycle: scan → evaluate alerts → probe → token write-back →
drain the outbox (docs/architecture.md §1). ``keyd check`` runs it once; the daemon
runs the same stages as separate ticks.

Each stage is a ``Stage(name, run, plan)``: ``run(services)`` does the
work in its own transaction(s) and returns a stage-specific result (kept
in the report for ``keyd check``'s verdict); stages are independent, so a
failing stage is recorded and the next one still runs on what the last
successful stages committed.

Dry run (``keyd check --dry-run``): the services' engine is a sandbox
whose every commit stays inside one transaction that is rolled back at the
end (``keyd.store.sandbox``), so the scan and the alert decisions are
computed for real but never persisted. Stages whose effect is outside the
database (probe: it mints a real token at the issuer; token write-back:
mints and writes Vault; outbox: mail and webhooks) do not ``run``: their
``plan(services)`` lists what they would have done, reading the database
only, and the report carries those lines as skipped side effects. A
side-effect stage without a plan is skipped whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from keyd.errors import KeydError

if TYPE_CHECKING:
    from keyd.runtime.wiring import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A pluggable step of the cycle (see the module docstring)."""

    name: str
    run: Callable[[Services], object]
    #: True when ``run`` acts outside the database (mail, Vault, files).
    side_effects: bool = False
    #: Dry-run replacement for side-effect stages: what ``run`` would do.
    plan: Callable[[Services], Sequence[str]] | None = None


@dataclass
class StageReport:
    name: str
    ok: bool = True
    skipped: bool = False
    error: str | None = None
    error_type: str | None = None
    result: object = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "skipped": self.skipped,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CycleReport:
    started: datetime
    dry_run: bool = False
    finished: datetime | None = None
    stages: list[StageReport] = field(default_factory=list)
    skipped_side_effects: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageReport | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def failed(self) -> list[StageReport]:
        return [s for s in self.stages if not s.ok]


def run_cycle(services: Services, stages: Sequence[Stage], *, dry_run: bool = False) -> CycleReport:
    """Run ``stages`` in order against ``services`` (already sandboxed by
    the caller for a dry run: see ``keyd.runtime.wiring.dry_run``)."""
    report = CycleReport(started=services.clock.now(), dry_run=dry_run)
    for stage in stages:
        report.stages.append(_run_stage(services, stage, dry_run, report))
    report.finished = services.clock.now()
    return report


def _run_stage(services: Services, stage: Stage, dry_run: bool, report: CycleReport) -> StageReport:
    out = StageReport(stage.name)
    start = services.clock.monotonic()
    try:
        if dry_run and stage.side_effects:
            out.skipped = True
            if stage.plan is None:
                report.skipped_side_effects.append(f"{stage.name}: stage skipped (dry run)")
            else:
                report.skipped_side_effects.extend(f"{stage.name}: {line}" for line in stage.plan(services))
        else:
            out.result = stage.run(services)
    except KeydError as exc:
        out.ok, out.error, out.error_type = False, str(exc), type(exc).__name__
        log.error("cycle: stage %s failed: %s", stage.name, exc, exc_info=None if exc.retryable else exc)
    except Exception as exc:  # one broken stage must not hide the others' results
        out.ok, out.error, out.error_type = False, f"{type(exc).__name__}: {exc}", type(exc).__name__
        log.exception("cycle: stage %s failed", stage.name)
    out.seconds = services.clock.monotonic() - start
    return out
