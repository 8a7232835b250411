"""Which keys' expiry ladder rotation holds back (README "Rotation").

Alerts are the fallback for what cannot be rotated: a key with an
unfinished rotation (planned … published), or with none yet while the
rotation policy makes it due (``keyd check`` evaluates before it rotates),
gets only its tightest rung and ``expired``, the safety net for a rotation
that stalls. A failed rotation releases the hold; its transition re-arms
the key (``store.rotations.transition``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from keyd.checks.rotation import RotationPolicy, due_reason
from keyd.config import Config
from keyd.store import alerts as store
from keyd.store.alerts import Session
from keyd.store.keys import KeyRecord
from keyd.store.rotations import OPEN_STATES
from keyd.vocab import KeyKind, KeyStatus, RotationReason

__all__ = ["rotation_held"]


def rotation_held(session: Session, config: Config, keys: Sequence[KeyRecord], now: datetime) -> set[int]:
    """The keys (pks) whose looser ladder rungs rotation covers: an
    unfinished rotation, or none yet while the policy makes the key due
    (the ``rotate`` stage plans it later in the same ``keyd check``). A
    failed rotation releases the hold."""
    states = store.rotation_states(session, [k.key_id for k in keys])
    policy = (
        RotationPolicy.from_config(config.rotation, config.timezone)
        if config.rotation is not None and config.rotation.enabled
        else None
    )
    return {
        k.pk
        for k in keys
        if states.get(k.key_id) in OPEN_STATES
        or (policy is not None and k.key_id not in states and _rotation_due(k, policy, now))
    }


def _rotation_due(key: KeyRecord, policy: RotationPolicy, now: datetime) -> bool:
    """Whether ``rotate`` would plan ``key`` now (``store.rotations.candidates``
    with ``checks.rotation.due_reason``)."""
    if key.status != KeyStatus.ACTIVE or key.kind != KeyKind.SERVICE_ACCOUNT or not key.files:
        return False
    return due_reason(key, now, policy) == RotationReason.DUE
