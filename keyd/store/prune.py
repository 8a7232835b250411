"""Keep history tables bounded (the daemon's prune tick and ``keyd check``).

Pruned: the probe history (the newest probe of every key is always kept,
however old) and audit events older than their retention. Alerts and
deliveries stay: they are what makes "never the same alert twice" hold.

Deletes run in batches of ``BATCH`` rows, each its own short transaction,
so a first prune of a large backlog never holds a long write lock. On
PostgreSQL a table that lost rows is then vacuumed and analysed by keyd
itself (``VACUUM (ANALYZE)``, outside a transaction), and so is ``keys``
every time: the space is reusable and the due-time indexes lean at once,
whatever the server's autovacuum settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import ColumnElement, delete, func, select, text
from sqlalchemy.engine import Engine

from keyd.store.engine import session_scope
from keyd.store.models import Event, Probe

log = logging.getLogger(__name__)

BATCH: Final = 10_000


@dataclass(frozen=True)
class PruneReport:
    probes: int = 0
    events: int = 0
    vacuumed: tuple[str, ...] = ()


def prune_history(engine: Engine, *, probes_before: datetime, events_before: datetime) -> PruneReport:
    """Delete old probe rows (each key's newest stays) and old events."""
    probes = prune_probes(engine, probes_before)
    events = _batched(engine, Event, Event.at < events_before)
    vacuumed = _vacuum(engine, [name for name, n in (("probes", probes), ("events", events)) if n])
    return PruneReport(probes, events, vacuumed)


def prune_probes(engine: Engine, before: datetime) -> int:
    """Delete probe rows older than ``before`` except each key's newest;
    returns how many were deleted."""
    newest = select(func.max(Probe.id)).group_by(Probe.key_pk).scalar_subquery()
    return _batched(engine, Probe, Probe.at < before, Probe.id.not_in(newest))


def _batched(engine: Engine, model: type[Event] | type[Probe], *where: ColumnElement[bool]) -> int:
    """Delete the rows of ``model`` matching ``where``, ``BATCH`` at a time."""
    total = 0
    while True:
        chosen = select(model.id).where(*where).limit(BATCH).scalar_subquery()
        with session_scope(engine) as session:
            result = session.execute(
                delete(model).where(model.id.in_(chosen)).execution_options(synchronize_session=False)
            )
            count = int(getattr(result, "rowcount", 0) or 0)
        total += count
        if count < BATCH:
            return total


def _vacuum(engine: Engine, tables: list[str]) -> tuple[str, ...]:
    """PostgreSQL: vacuum what was pruned, and always ``keys``. Its rows are
    rewritten all the time (each probe, each alert schedule) and every old
    version leaves entries in the due-time indexes: an empty "anything due?"
    range still walked 100,000 dead entries after one evaluation of every
    key (7.9 ms instead of 0.07 ms at 100k keys). Stale statistics after a
    bulk load also made the planner scan the table (20 ms vs 7.6 ms at 30k)."""
    if engine.dialect.name != "postgresql":
        return ()
    tables = [*tables, "keys"]
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in tables:
                conn.execute(text(f"VACUUM (ANALYZE) {name}"))
    except Exception as exc:  # a role without VACUUM rights: pruning still counted
        log.warning("prune: VACUUM %s failed (autovacuum will catch up): %s", ", ".join(tables), exc)
        return ()
    return tuple(tables)
