"""Keep history tables bounded (the daemon's prune tick).

Only the probe history is pruned: alerts and deliveries are what makes
"never the same alert twice" hold, and events are the audit log; both stay.
The newest probe of every key is always kept, however old.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from keyd.store.engine import session_scope
from keyd.store.models import Probe


def prune_probes(engine: Engine, before: datetime) -> int:
    """Delete probe rows older than ``before`` except each key's newest;
    returns how many were deleted."""
    newest = select(func.max(Probe.id)).group_by(Probe.key_pk).scalar_subquery()
    with session_scope(engine) as session:
        result = session.execute(delete(Probe).where(Probe.at < before, Probe.id.not_in(newest)))
        return int(getattr(result, "rowcount", 0) or 0)
