"""When a key is rotated, and the times of its rotation (README "Rotation").

Pure functions of the policy (``[rotation]``), a key and an instant:

* a service-user key is *due* when at most ``before`` of its lifetime is
  left; a key that never expires, or whose expiry is unknown, only when
  ``rotate_never_expiring`` is set and the key was first seen that long ago;
* the new key expires at 00:00 at the start of the day ``lifetime`` from
  now in ``timezone``, as the console would set it (docs/zitadel.md §2);
* the old key is retired ``overlap`` after the new one was published,
  but never later than the old key's own expiry (it is dead then anyway).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

from keyd.config import RotationConfig
from keyd.store.keys import KeyRecord, Location
from keyd.vocab import RotationReason

NEVER_YEAR = 9999


@dataclass(frozen=True)
class RotationPolicy:
    """The ``[rotation]`` policy keyd applies (defaults as documented)."""

    enabled: bool = True
    before: timedelta = timedelta(days=30)
    lifetime: timedelta = timedelta(days=90)
    overlap: timedelta = timedelta(days=7)
    retire: bool = True
    algorithm: str = "rsa-2048"
    principals: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    rotate_never_expiring: timedelta | None = None
    tz: tzinfo = UTC
    # the proof: the issuer may need a moment before a new key mints
    prove_attempts: int = 5
    prove_base: timedelta = timedelta(seconds=1)
    prove_cap: timedelta = timedelta(seconds=15)
    # transient failures (API or Vault down): retried on later ticks
    retry_base: timedelta = timedelta(minutes=1)
    retry_cap: timedelta = timedelta(hours=1)
    # how often a published rotation looks again whether it may retire
    recheck: timedelta = timedelta(minutes=1)

    @classmethod
    def from_config(cls, cfg: RotationConfig, tz: tzinfo) -> RotationPolicy:
        return cls(
            enabled=cfg.enabled,
            before=cfg.before,
            lifetime=cfg.lifetime,
            overlap=cfg.overlap,
            retire=cfg.retire,
            algorithm=cfg.algorithm,
            principals=cfg.principals,
            sources=cfg.sources,
            rotate_never_expiring=cfg.rotate_never_expiring,
            tz=tz,
            recheck=cfg.recheck,
        )


def selected(locations: Sequence[Location], principal: str, policy: RotationPolicy) -> bool:
    """Whether ``principals`` / ``sources`` (names or path globs) pick the key."""
    if policy.principals and principal not in policy.principals:
        return False
    if policy.sources:
        return any(
            loc.source == sel or fnmatch.fnmatch(loc.ref, sel) for loc in locations for sel in policy.sources
        )
    return True


def never_expires(expires_at: datetime | None) -> bool:
    return expires_at is None or expires_at.year >= NEVER_YEAR


def due_reason(key: KeyRecord, now: datetime, policy: RotationPolicy) -> RotationReason | None:
    """``DUE``, ``NEVER_EXPIRING`` or None (not due, or not selected by its
    key files)."""
    if not selected(key.files, key.principal, policy):
        return None
    if never_expires(key.expires_at):
        after, seen = policy.rotate_never_expiring, key.first_seen
        due = after is not None and seen is not None and now >= seen + after
        return RotationReason.NEVER_EXPIRING if due else None
    assert key.expires_at is not None
    return RotationReason.DUE if key.expires_at - now <= policy.before else None


def new_expiry(now: datetime, policy: RotationPolicy) -> datetime:
    """00:00 at the start of the day ``lifetime`` from ``now``, in ``tz``."""
    day = (now + policy.lifetime).astimezone(policy.tz).date()
    return datetime.combine(day, time(0), tzinfo=policy.tz).astimezone(UTC)


def retire_after(published_at: datetime, old_expires_at: datetime | None, policy: RotationPolicy) -> datetime:
    """When the old key may be removed: after the overlap, capped at its expiry."""
    at = published_at + policy.overlap
    if old_expires_at is not None and not never_expires(old_expires_at):
        at = min(at, old_expires_at)
    return at


def candidate_window(now: datetime, policy: RotationPolicy) -> tuple[datetime, datetime | None]:
    """The bounds for ``store.rotations.candidates``: expiring before, and
    (never-expiring keys) first seen before."""
    seen = None if policy.rotate_never_expiring is None else now - policy.rotate_never_expiring
    return now + policy.before, seen
