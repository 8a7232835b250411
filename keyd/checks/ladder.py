"""The expiry alert ladder: which rung, if any, is due now.

Pure: no clock, no I/O; a function of the expiry instant, the configured
thresholds, "now" and the rungs already fired.

Rules:

* Rungs are the thresholds (default 30, 14, 7, 3, 1 days) before the
  expiry *instant*, then ``expired`` at the instant itself (docs/zitadel.md §2:
  at the instant the key is already dead).
* Each rung is named ``<label>@<expiry>``, e.g. ``7d@2027-01-01T00:00:00Z``.
  Including the expiry means a key whose expiry changes gets a fresh
  ladder; rungs fired for the old expiry neither block the new ones nor
  stay open (the caller resolves them).
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
from typing import Final

from keyd.checks.expiry import is_never
from keyd.clock import utc
from keyd.timeutil import isoformat_z, shift
from keyd.vocab import AlertKind, Severity

EXPIRED: Final = "expired"
# Severity by how close the expiry is (documented in the README's alerts section).
CRITICAL_WITHIN: Final = timedelta(days=3)
WARNING_WITHIN: Final = timedelta(days=14)


@dataclass(frozen=True)
class Rung:
    """One step of the ladder for one expiry instant.

    ``label`` is ``"7d"`` or ``"expired"``; ``threshold`` is the value stored
    in ``alerts.threshold`` (label @ expiry); ``before`` is how long before the
    expiry it is due (zero for ``expired``).
    """

    label: str
    threshold: str
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


def rung_suffix(expires_at: datetime) -> str:
    """The ``@<expiry>`` part shared by every rung of one expiry instant."""
    return "@" + isoformat_z(expires_at)


def severity_for(before: timedelta) -> Severity:
    if before <= CRITICAL_WITHIN:
        return Severity.CRITICAL
    if before <= WARNING_WITHIN:
        return Severity.WARNING
    return Severity.INFO


def ladder(expires_at: datetime, thresholds: Iterable[timedelta]) -> list[Rung]:
    """All rungs for ``expires_at``, loosest first, ``expired`` last.
    Empty for the "never expires" sentinel. Duplicate or non-positive
    thresholds are ignored."""
    expires_at = utc(expires_at)
    if is_never(expires_at):
        return []
    suffix = rung_suffix(expires_at)
    befores = sorted({t for t in thresholds if t > timedelta(0)}, reverse=True)
    rungs = [
        Rung(
            threshold_label(b),
            threshold_label(b) + suffix,
            shift(expires_at, -b),
            b,
            AlertKind.EXPIRING,
            severity_for(b),
        )
        for b in befores
    ]
    rungs.append(
        Rung(EXPIRED, EXPIRED + suffix, expires_at, timedelta(0), AlertKind.EXPIRED, Severity.CRITICAL)
    )
    return rungs


def due_rungs(
    expires_at: datetime, thresholds: Iterable[timedelta], now: datetime, already_fired: Set[str]
) -> Rung | None:
    """The one rung to fire at ``now``, or None.

    That is the tightest rung whose due time has passed, unless it (or a
    tighter one) already fired. ``already_fired`` holds ``Rung.threshold``
    values; entries for other expiry instants are ignored.
    """
    now = utc(now)
    due = [r for r in ladder(expires_at, thresholds) if r.due_at <= now]
    if not due:
        return None
    tightest = due[-1]
    if tightest.threshold in already_fired:
        return None
    return tightest
