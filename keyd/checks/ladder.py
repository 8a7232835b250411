"""The expiry alert ladder: which rung, if any, is due now.

Pure: no clock, no I/O; a function of the expiry instant, the configured
thresholds, "now" and the rungs already fired.

Rules:

* Rungs are the thresholds (default 30, 14, 7, 3, 1 days) before the
  expiry *instant*, then ``expired`` at the instant itself (docs/zitadel.md §2:
  at the instant the key is already dead).
* Each rung is a label and the expiry it counts down to (``alerts.threshold``
  ``7d`` and ``alerts.expires_at``, in whole seconds). Keying on the expiry
  means a key whose expiry changes gets a fresh ladder; rungs fired for the
  old expiry neither block the new ones nor stay open (the caller resolves
  them).
* Only the *tightest* rung already due is ever a candidate: a key first
  seen 5 days before expiry gets one ``7d`` alert, not a burst of 30/14/7;
  after downtime, everything overdue collapses into one alert. Looser rungs
  skipped that way never fire later; tighter rungs still fire at their time.
* A rung fires at most once: the caller passes ``already_fired`` and the
  database's unique constraint enforces it even across daemons.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final

from keyd.checks.expiry import is_never
from keyd.clock import utc
from keyd.timeutil import shift
from keyd.vocab import AlertKind, Severity

EXPIRED: Final = "expired"
# Severity by how close the expiry is (documented in the README's alerts section).
CRITICAL_WITHIN: Final = timedelta(days=3)
WARNING_WITHIN: Final = timedelta(days=14)


@dataclass(frozen=True)
class Rung:
    """One step of the ladder for one expiry instant.

    ``label`` is ``"7d"`` or ``"expired"`` (stored in ``alerts.threshold``);
    ``expires_at`` is the expiry instant it belongs to, in whole seconds
    (``alerts.expires_at``); ``before`` is how long before the expiry it is
    due (zero for ``expired``).
    """

    label: str
    expires_at: datetime
    due_at: datetime
    before: timedelta
    kind: AlertKind  # EXPIRING or EXPIRED
    severity: Severity


def threshold_label(before: timedelta) -> str:
    """``30d``, ``12h``, ``90m``, ``45s``: the largest unit that divides it."""
    seconds = int(before.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def rung_expiry(expires_at: datetime) -> datetime:
    """The instant every rung of this expiry is stored under: UTC, whole
    seconds (expiries differing by a fraction of a second share a ladder)."""
    return utc(expires_at).replace(microsecond=0)


def severity_for(before: timedelta) -> Severity:
    if before <= CRITICAL_WITHIN:
        return Severity.CRITICAL
    if before <= WARNING_WITHIN:
        return Severity.WARNING
    return Severity.INFO


@lru_cache(maxsize=16)
def _steps(thresholds: tuple[timedelta, ...]) -> tuple[tuple[timedelta, str, Severity], ...]:
    """The rungs' offsets, labels and severities, loosest first: the same
    for every key of one configuration, so computed once, not per key."""
    befores = sorted({t for t in thresholds if t > timedelta(0)}, reverse=True)
    return tuple((b, threshold_label(b), severity_for(b)) for b in befores)


def ladder(expires_at: datetime, thresholds: Iterable[timedelta]) -> list[Rung]:
    """All rungs for ``expires_at``, loosest first, ``expired`` last.
    Empty for the "never expires" sentinel. Duplicate or non-positive
    thresholds are ignored."""
    expires_at = utc(expires_at)
    if is_never(expires_at):
        return []
    instant = rung_expiry(expires_at)
    rungs = [
        Rung(label, instant, shift(expires_at, -b), b, AlertKind.EXPIRING, severity)
        for b, label, severity in _steps(tuple(thresholds))
    ]
    rungs.append(Rung(EXPIRED, instant, expires_at, timedelta(0), AlertKind.EXPIRED, Severity.CRITICAL))
    return rungs


def due_rungs(
    expires_at: datetime, thresholds: Iterable[timedelta], now: datetime, already_fired: Set[str]
) -> Rung | None:
    """The one rung to fire at ``now``, or None.

    That is the tightest rung whose due time has passed, unless it (or a
    tighter one) already fired. ``already_fired`` holds the ``Rung.label``
    values fired for this expiry instant (``rung_expiry(expires_at)``).
    """
    now = utc(now)
    due = [r for r in ladder(expires_at, thresholds) if r.due_at <= now]
    if not due:
        return None
    tightest = due[-1]
    if tightest.label in already_fired:
        return None
    return tightest
