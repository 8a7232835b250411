"""SQL for the validation probe (README "Validation probe and token write-back"): which keys are
due, and recording what a probe found.

Callers above the store never see a Session except through the ``after``
hook of ``record_probe_results`` (so that e.g. issuer-health bookkeeping
commits in the same transaction as the probe rows). Rows are handed out as
frozen snapshots, never as live ORM objects, because probes run in worker
threads long after the selecting transaction has ended.

Contract with the inventory: a key is probed while ``status == "active"``
and ``next_probe_at`` is NULL (never probed / re-armed) or due. A rejected
key gets ``status = "rejected"`` and ``next_probe_at = NULL``; it stays
out of the schedule until the inventory re-arms it (its content changed:
status back to active, ``next_probe_at`` NULL, ``probe_failures`` 0) or
an operator forces a probe (``keyd probe KEY_ID``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from keyd.errors import UsageError
from keyd.store.keys import KeyRecord, key_records
from keyd.store.models import ALERT_NOW, Key, Probe
from keyd.vocab import KeyStatus


@dataclass(frozen=True)
class ProbeRecord:
    """The outcome of one probe and the key's new schedule.

    ``outcome`` None means no issuer answer was obtained because the key
    material could not be loaded: no history row, only the key's
    ``last_error`` and schedule change. ``status`` None leaves it as is.
    """

    key_pk: int
    content_hash: str  # only update the key if it still has this content
    at: datetime
    outcome: str | None
    http_status: int | None
    error_code: str | None
    diagnosis: str | None
    message: str | None
    latency_ms: float | None
    attempts: int
    next_probe_at: datetime | None
    failures: int
    status: str | None
    ok: bool


#: Probe order within each half of ``due_parts``: by ``next_probe_at`` (all
#: NULL in the first: by id), the order of ``ix_keys_probe_due`` itself.
_DUE_ORDER = (Key.next_probe_at, Key.id)


def due_parts(now: datetime) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The schedule contract of the module docstring as two WHERE clauses,
    probed in this order: the active keys never probed (or re-armed), by
    id, then the due ones, most overdue first. With ``_DUE_ORDER`` each is
    read off ``ix_keys_probe_due`` (status, next_probe_at, id) in index
    order, touching only the keys it returns; their OR, sorted with a
    ``next_probe_at IS NOT NULL`` key, made both planners walk and sort
    every active key, twice per daemon chunk (migration 0005)."""
    active = Key.status == KeyStatus.ACTIVE
    return and_(active, Key.next_probe_at.is_(None)), and_(active, Key.next_probe_at <= now)


def due_targets(engine: Engine, now: datetime, *, limit: int | None = None) -> list[KeyRecord]:
    """Active keys whose probe is due at ``now``, never-probed first, then
    the most overdue; at most ``limit``. One query per half of
    ``due_parts`` (the second only while ``limit`` is not reached), each
    reading no more keys than it returns, whatever the inventory's size."""
    with Session(engine) as session:
        return _due_records(session, now, limit)


def _due_records(session: Session, now: datetime, limit: int | None) -> list[KeyRecord]:
    out: list[KeyRecord] = []
    for where in due_parts(now):
        left = None if limit is None else limit - len(out)
        if left is not None and left <= 0:
            break
        out.extend(key_records(session, where, order_by=_DUE_ORDER, limit=left))
    return out


def due_count_query(now: datetime) -> Select[Any]:
    """How many keys are due at ``now``: one statement, a count per half of
    ``due_parts``, each off the index (so it costs what is due, not the
    inventory; the daemon asks after every full probe chunk)."""
    nulls, overdue = (select(func.count()).where(w).scalar_subquery() for w in due_parts(now))
    return select(nulls + overdue)


def due_preview(engine: Engine, now: datetime, *, limit: int) -> tuple[int, list[KeyRecord]]:
    """How many keys are due at ``now`` and the first ``limit`` of them in
    probe order. Read-only: never touches the schedule (a dry run must not
    look like a probe)."""
    with Session(engine) as session:
        total = int(session.scalar(due_count_query(now)) or 0)
        return total, _due_records(session, now, limit) if limit > 0 and total else []


def target_by_key_id(engine: Engine, key_id: str) -> KeyRecord:
    """One key by its ZITADEL key id, whatever its status or schedule
    (``keyd probe KEY_ID`` ignores backoff and rejection)."""
    with Session(engine) as session:
        found = key_records(session, Key.key_id == key_id)
    if not found:
        raise UsageError(
            "KEY_ID", f"no key with id {key_id!r} in the inventory (run `keyd scan`, or see `keyd status`)"
        )
    return found[0]


def record_probe_results(
    engine: Engine, records: Sequence[ProbeRecord], *, after: Callable[[Session], None] | None = None
) -> None:
    """Write the probe history and the keys' new state in one transaction.

    A key whose content changed while it was probed (another file now
    carries its id) keeps its new state: the history row is still written,
    the key row is not touched. ``after(session)`` runs inside the same
    transaction (issuer-health bookkeeping). Batched: one multi-row INSERT
    for the history and one executemany UPDATE per set of columns, not a
    statement (and an ORM object) per probe.
    """
    history = [
        {
            "key_pk": rec.key_pk,
            "at": rec.at,
            "outcome": rec.outcome,
            "http_status": rec.http_status,
            "error_code": rec.error_code,
            "diagnosis": rec.diagnosis,
            "message": rec.message,
            "latency_ms": rec.latency_ms,
            "attempts": rec.attempts,
        }
        for rec in records
        if rec.outcome is not None
    ]
    groups: dict[tuple[str, ...], list[dict[str, object]]] = defaultdict(list)
    for rec in records:
        values = _key_values(rec)
        groups[tuple(values)].append(
            {"b_pk": rec.key_pk, "b_hash": rec.content_hash, **{f"b_{k}": v for k, v in values.items()}}
        )
    keys = Key.__table__
    with Session(engine) as session, session.begin():
        if history:  # one executemany INSERT, Core: the ORM's bulk path costs ~10 us a row more
            session.execute(insert(Probe.__table__), history)  # type: ignore[arg-type]
        for columns, rows in groups.items():  # one executemany UPDATE per shape
            stmt = (
                update(keys)  # type: ignore[arg-type]
                .where(keys.c.id == bindparam("b_pk"), keys.c.content_hash == bindparam("b_hash"))
                .values({c: bindparam(f"b_{c}") for c in columns})
            )
            session.execute(stmt, rows)
        if after is not None:
            after(session)


def _key_values(rec: ProbeRecord) -> dict[str, object]:
    """The key columns one probe outcome sets."""
    values: dict[str, object] = {
        "next_probe_at": rec.next_probe_at,
        "probe_failures": rec.failures,
        "last_error": None if rec.ok else rec.message,
        "updated_at": rec.at,
    }
    if rec.outcome is not None:
        values["last_probe_at"] = rec.at
        values["last_probe_outcome"] = rec.outcome
    if rec.ok:
        values["last_ok_at"] = rec.at
    if rec.status is not None:
        values["status"] = rec.status
        values["next_alert_at"] = ALERT_NOW  # a new verdict: evaluate alerts now
    return values


@dataclass(frozen=True)
class ProbeHistoryRow:
    at: datetime
    outcome: str
    http_status: int | None
    error_code: str | None
    diagnosis: str | None
    message: str | None
    latency_ms: float | None
    attempts: int


def probe_history(engine: Engine, key_pk: int, *, limit: int = 20) -> list[ProbeHistoryRow]:
    """The latest probes of one key, newest first."""
    with Session(engine) as session:
        rows = session.scalars(
            select(Probe)
            .where(Probe.key_pk == key_pk)
            .order_by(Probe.at.desc(), Probe.id.desc())
            .limit(limit)
        )
        return [
            ProbeHistoryRow(
                r.at, r.outcome, r.http_status, r.error_code, r.diagnosis, r.message, r.latency_ms, r.attempts
            )
            for r in rows
        ]
