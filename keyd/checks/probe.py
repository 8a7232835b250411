"""The validation probe: prove each active key still works (issue
"Validation probe", docs/zitadel.md §3–4).

For each due key: load its key file again (``keyload``), sign an assertion
and ask the issuer — a token for service users, an introspection call with
a client assertion for application keys — then classify the outcome:

- ``ok``;
- ``rejected``: an OAuth error body, whatever the status, diagnosed
  locally (expired by the file's date, clock skew, malformed, otherwise
  revoked or unknown to the issuer). Final until the key changes or an
  operator forces a probe;
- ``unavailable``: connection error, timeout, 502/503/504 — never the key's
  fault; retried fast inside the round, then backed off per key;
- ``bad_response``: the issuer answered something unusable; treated like
  ``unavailable`` for scheduling.

A key whose file cannot be read right now is ``unreadable``: no history
row (the issuer was never asked), but its schedule backs off as for a
transient failure. A failure never advances the schedule as if it had
succeeded; success schedules the next probe one interval later minus a
random share (``jitter``) so that keys first seen together drift apart.

Probes run ``concurrency`` at a time over the one shared ``IssuerClient``:
from one thread through its ``Multiplexer`` where the issuer is reached
directly, else in a bounded thread pool; a ``RateLimiter`` bounds
requests per second to the issuer, and one slow answer holds one of the
``concurrency`` places, never the round.

This module holds the decisions and value types; the round itself
(``probe_due``, ``ProbeServices``, ``build_probe_services``) is in
``keyd.actions.probe`` because it uses the retry helper in ``actions``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from keyd.clock import Clock
from keyd.config import IssuerConfig
from keyd.errors import IssuerRejected, IssuerUnavailable, KeydError
from keyd.timeutil import isoformat_z
from keyd.vocab import ProbeOutcome

PROBE_SCHEMA: Final = "keyd.probe/1"


@dataclass(frozen=True)
class ProbePolicy:
    """Schedule and retry knobs (defaults follow docs/architecture.md §5)."""

    interval: timedelta = timedelta(hours=6)
    jitter: float = 0.1  # success: next = at + interval - random[0, jitter * interval)
    concurrency: int = 8
    rate_limit: float = 50.0  # requests per second to the issuer; <= 0: unlimited
    fast_attempts: int = 3  # inside one round
    fast_base: timedelta = timedelta(seconds=1)
    fast_cap: timedelta = timedelta(seconds=10)
    slow_base: timedelta = timedelta(minutes=1)  # across rounds, per key
    slow_cap: timedelta = timedelta(hours=1)  # never beyond ``interval``

    def chunk(self, slice_seconds: float) -> int:
        """How many probes fit in one slice of the work thread at the rate
        limit (at least one per worker)."""
        if self.rate_limit <= 0:
            return max(self.concurrency, 500)
        return max(self.concurrency, int(self.rate_limit * slice_seconds))

    @classmethod
    def from_config(cls, cfg: IssuerConfig) -> ProbePolicy:
        return cls(
            interval=cfg.probe_interval, concurrency=max(1, cfg.concurrency), rate_limit=cfg.rate_limit
        )


class RateLimiter:
    """At most ``rate`` acquisitions per second, spaced evenly, thread-safe.

    Each caller reserves the next free slot under the lock and waits for it
    outside the lock (``clock.sleep``), so tests with a ``FakeClock`` never
    wait for real time.
    """

    def __init__(self, rate: float, clock: Clock) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = clock.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self._clock.sleep(wait)

    def reserve(self) -> float:
        """Take the next free slot; the seconds until it (0: now)."""
        if self._interval <= 0:
            return 0.0
        with self._lock:
            now = self._clock.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        return slot - now


HealthHook = Callable[[Any, bool, datetime], None]  # note_issuer_health(session, ok, now)


@dataclass(frozen=True)
class ProbeResult:
    """One key's probe, for reports and ``keyd probe`` (no secrets)."""

    key_id: str
    principal: str
    kind: str
    outcome: str  # ok | rejected | unavailable | bad_response | unreadable
    at: datetime
    diagnosis: str | None = None
    message: str | None = None
    http_status: int | None = None
    error_code: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    next_probe_at: datetime | None = None

    def to_json(self) -> dict[str, object]:
        """The body of ``keyd probe --json`` (``PROBE_SCHEMA``)."""
        return {k: (isoformat_z(v) if isinstance(v, datetime) else v) for k, v in self.__dict__.items()}


@dataclass
class ProbeReport:
    """What a probe round did."""

    at: datetime
    results: list[ProbeResult] = field(default_factory=list)
    #: a chunked round stopped at its slice with keys still due (the daemon
    #: runs the next chunk at once, after whatever else is queued)
    more: bool = False
    #: with ``more``: keys still due after this chunk (for /healthz), if counted
    remaining: int | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out

    @property
    def issuer_reachable(self) -> bool | None:
        """None if the issuer was not contacted; else whether any probe got
        an answer from it (a rejection is an answer)."""
        contacted = [r for r in self.results if r.outcome != ProbeOutcome.UNREADABLE]
        if not contacted:
            return None
        return any(r.outcome != ProbeOutcome.UNAVAILABLE for r in contacted)


def classify(exc: KeydError) -> ProbeOutcome:
    """The probe outcome an issuer error stands for (docs/zitadel.md §4)."""
    if isinstance(exc, IssuerRejected):
        return ProbeOutcome.REJECTED
    if isinstance(exc, IssuerUnavailable):
        return ProbeOutcome.UNAVAILABLE
    return ProbeOutcome.BAD_RESPONSE
