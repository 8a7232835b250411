"""Candidates → rows: one source scan, one transaction (issue "Inventory").

``reconcile(engine, result, now)`` folds a source's ``ScanResult`` into the
inventory; ``record_failure(engine, source, error, now)`` is what happens
instead when the scan itself failed. Rules:

* A new key id → a ``Key`` (status ``active`` or ``expired`` by its expiry
  at scan time) and event ``key.new``. One key id in several places is one
  ``Key`` with several ``KeyLocation`` rows.
* Changed content (``content_hash``) → fields updated, event
  ``key.changed``, probe state re-armed (status back to active/expired,
  ``next_probe_at`` NULL, ``probe_failures`` 0: the contract in
  ``keyd.store.probes``). Unchanged content keeps ``rejected``.
* A location not seen any more → ``missing``; a key with no present
  location anywhere (all sources) → ``missing``, or ``invalid`` when every
  location it has is invalid. Rows are never deleted: history stays.
* A bad file → location ``invalid`` with the reason; its key is untouched
  unless that leaves it with no usable location.
* Every transition writes an ``Event`` (JSON detail, never secrets).
* A failed scan changes only the ``SourceState`` (+ ``source.failed``):
  an outage never turns keys into ``missing``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from keyd.sources.base import Candidate, ScanResult
from keyd.sources.keyfile import NEVER_YEAR, KeyFile
from keyd.store.inventory import (
    INVALID,
    MISSING,
    PRESENT,
    Engine,
    InventoryTx,
    inventory_tx,
    record_source_failure,
)
from keyd.store.models import Key, KeyLocation

log = logging.getLogger(__name__)

ACTIVE, EXPIRED, REJECTED = "active", "expired", "rejected"


@dataclass
class SourceOutcome:
    """What one source scan did (for ``keyd scan`` and metrics)."""

    source: str
    ok: bool = True
    error: str | None = None
    seen: int = 0  # locations looked at
    unchanged: int = 0  # not re-read
    keys: int = 0  # distinct keys present in this source
    new: int = 0  # keys first seen
    changed: int = 0  # keys whose content changed
    missing: int = 0  # keys that became missing (or invalid) in this scan
    returned: int = 0  # keys back from missing/invalid
    invalid: int = 0  # locations currently invalid in this source
    warnings: int = 0  # locations with a permission warning
    events: int = 0


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Same rule as ``keyd.checks.expiry`` (strict: dead at the instant
    itself, ZITADEL.md §2); restated here because checks sit above the
    inventory. Unknown and "never" (year 9999) are not expired."""
    return expires_at is not None and expires_at.year < NEVER_YEAR and now >= expires_at


def reconcile(engine: Engine, result: ScanResult, now: datetime) -> SourceOutcome:
    """Apply one successful scan in one transaction; returns the counts."""
    with inventory_tx(engine) as tx:
        outcome = _Reconciler(tx, result.source, now).run(result.candidates)
    log.info("%s: %d locations, %d keys (%d new, %d changed, %d missing, %d invalid)",
             outcome.source, outcome.seen, outcome.keys, outcome.new, outcome.changed,
             outcome.missing, outcome.invalid)
    return outcome


def record_failure(engine: Engine, source: str, error: BaseException,
                   now: datetime) -> SourceOutcome:
    """The scan of ``source`` raised: record it, touch nothing else."""
    state = record_source_failure(engine, source, str(error), now)
    log.warning("%s: scan failed (%d in a row): %s", source, state.consecutive_failures,
                state.last_error)
    return SourceOutcome(source=source, ok=False, error=state.last_error, events=1)


class _Reconciler:
    def __init__(self, tx: InventoryTx, source: str, now: datetime) -> None:
        self.tx = tx
        self.source = source
        self.now = now
        self.out = SourceOutcome(source=source)
        self.affected: dict[int, Key] = {}  # id(Key) -> Key: keys to settle
        self.new_keys: set[int] = set()
        self.present_here: set[int] = set()  # keys with a present location in this source
        self.changed_keys: set[int] = set()

    def run(self, candidates: list[Candidate]) -> SourceOutcome:
        existing = {loc.ref: loc for loc in self.tx.locations(self.source)}
        keys = self.tx.keys_by_key_id(c.keyfile.key_id for c in candidates if c.keyfile)
        for cand in candidates:
            self.out.seen += 1
            self.out.warnings += bool(cand.warning)
            loc = existing.pop(cand.ref, None)
            if cand.unchanged:
                self._unchanged(cand, loc)
            elif cand.keyfile is not None:
                self._found(cand, cand.keyfile, loc, keys)
            else:
                self._invalid(cand, loc)
        for loc in existing.values():
            self._gone(loc)
        self._settle_keys()
        self._source_ok()
        self.out.events = self.tx.pending_events
        return self.out

    def _touch(self, key: Key | None) -> None:
        if key is not None:
            key.last_seen = self.now
            self.affected[id(key)] = key

    # --- per location ---------------------------------------------------

    def _unchanged(self, cand: Candidate, loc: KeyLocation | None) -> None:
        if loc is None:  # stamps came from a row a concurrent writer removed
            log.debug("%s: %s reported unchanged but unknown; re-read next scan",
                      self.source, cand.ref)
            return
        self.out.unchanged += 1
        loc.last_seen = self.now
        if loc.warning != cand.warning:
            loc.warning = cand.warning
        self._touch(loc.key)
        if loc.key is not None and loc.status == PRESENT:
            self.present_here.add(id(loc.key))

    def _found(self, cand: Candidate, kf: KeyFile, loc: KeyLocation | None,
               keys: dict[str, Key]) -> None:
        key = keys.get(kf.key_id)
        if key is None:
            key = keys[kf.key_id] = self._new_key(cand, kf)
        elif key.content_hash != kf.content_hash:
            self._change_key(cand, kf, key)
        if loc is None:
            loc = KeyLocation(source=self.source, ref=cand.ref, first_seen=self.now, key=key)
            self.tx.add(loc)
            self._event("location.new", key, ref=cand.ref)
        else:
            if loc.key is not key:
                old = loc.key
                self._event("location.replaced", key, ref=cand.ref,
                            old_key_id=old.key_id if old else None)
                self._touch(old)
                loc.key = key
            if loc.status != PRESENT:
                self._event("location.returned", key, ref=cand.ref, was=loc.status)
        _fill_location(loc, cand, kf.content_hash, PRESENT, None, self.now)
        self._touch(key)
        self.present_here.add(id(key))

    def _invalid(self, cand: Candidate, loc: KeyLocation | None) -> None:
        problem = cand.error.problem if cand.error is not None else "no key and no error"
        self.out.invalid += 1
        if loc is None:
            loc = KeyLocation(source=self.source, ref=cand.ref, first_seen=self.now)
            self.tx.add(loc)
        if loc.status != INVALID or loc.last_error != problem:
            self._event("location.invalid", loc.key, ref=cand.ref, error=problem)
        _fill_location(loc, cand, None, INVALID, problem, self.now)
        # stamps dropped: an invalid file is re-read every scan (a chmod
        # that fixes it changes no mtime)
        loc.size = loc.mtime_ns = loc.inode = None
        self._touch_quiet(loc.key)

    def _touch_quiet(self, key: Key | None) -> None:
        if key is not None:
            self.affected[id(key)] = key

    def _gone(self, loc: KeyLocation) -> None:
        if loc.status != MISSING:
            self._event("location.missing", loc.key, ref=loc.ref, was=loc.status)
            loc.status = MISSING
        self._touch_quiet(loc.key)

    # --- keys -------------------------------------------------------------

    def _new_key(self, cand: Candidate, kf: KeyFile) -> Key:
        key = Key(key_id=kf.key_id, first_seen=self.now, last_seen=self.now, probe_failures=0)
        _fill_key(key, kf, self.now)
        self.tx.add(key)
        self.new_keys.add(id(key))
        self.out.new += 1
        self._event("key.new", key, ref=cand.ref, type=kf.kind, principal=kf.principal,
                    fingerprint=kf.fingerprint, expires_at=kf.expires_at, status=key.status)
        return key

    def _change_key(self, cand: Candidate, kf: KeyFile, key: Key) -> None:
        before = {"old_fingerprint": key.fingerprint, "old_expires_at": key.expires_at,
                  "old_status": key.status}
        _fill_key(key, kf, self.now)
        key.next_probe_at = None  # re-armed: probe the new content (store.probes contract)
        key.probe_failures = 0
        key.last_error = None
        if id(key) in self.new_keys:
            return  # two files of one new key disagree: the later one wins, no event
        self.changed_keys.add(id(key))
        self.out.changed += 1
        self._event("key.changed", key, ref=cand.ref, fingerprint=kf.fingerprint,
                    expires_at=kf.expires_at, **before)

    def _settle_keys(self) -> None:
        """Derive each touched key's status from its locations everywhere."""
        self.tx.flush()
        keys = list(self.affected.values())
        counts = self.tx.location_status_counts(k.id for k in keys)
        for key in keys:
            by_status = counts.get(key.id, {})
            if by_status.get(PRESENT):
                target = self._present_status(key)
            elif by_status.get(INVALID) and not by_status.get(MISSING):
                target = INVALID
            else:
                target = MISSING
            self._transition(key, target)
        self.out.keys = len(self.present_here)

    def _present_status(self, key: Key) -> str:
        changed = id(key) in self.changed_keys
        if not changed and (key.status == REJECTED or (
                key.status in (MISSING, INVALID) and key.last_probe_outcome == REJECTED)):
            return REJECTED  # the issuer's verdict stands until the content changes
        return EXPIRED if is_expired(key.expires_at, self.now) else ACTIVE

    def _transition(self, key: Key, target: str) -> None:
        old = key.status
        if old == target:
            return
        key.status = target
        key.updated_at = self.now
        if id(key) in self.new_keys:
            return
        if target in (MISSING, INVALID):
            self.out.missing += 1
            kind = f"key.{target}"
        elif old in (MISSING, INVALID):
            self.out.returned += 1
            kind = "key.returned"
        else:
            kind = "key.expired" if target == EXPIRED else "key.status"
        self._event(kind, key, was=old, status=target)

    def _source_ok(self) -> None:
        state = self.tx.source_state(self.source)
        if state.consecutive_failures:
            self._event("source.recovered", None, after_failures=state.consecutive_failures,
                        last_error=state.last_error)
        state.last_attempt_at = state.last_success_at = self.now
        state.last_error = None
        state.consecutive_failures = 0

    def _event(self, kind: str, key: Key | None, **detail: object) -> None:
        self.tx.event(self.now, kind, source=self.source, key=key, detail=dict(detail))


def _fill_key(key: Key, kf: KeyFile, now: datetime) -> None:
    key.kind = kf.kind
    key.principal = kf.principal
    key.algorithm = kf.algorithm
    key.key_size = kf.key_size
    key.fingerprint = kf.fingerprint
    key.expires_at = kf.expires_at
    key.content_hash = kf.content_hash
    key.status = EXPIRED if is_expired(kf.expires_at, now) else ACTIVE
    key.updated_at = now


def _fill_location(loc: KeyLocation, cand: Candidate, content_hash: str | None, status: str,
                   error: str | None, now: datetime) -> None:
    loc.status = status
    loc.size, loc.mtime_ns, loc.inode = cand.size, cand.mtime_ns, cand.inode
    loc.version = cand.version
    loc.content_hash = content_hash
    loc.last_error = error
    loc.warning = cand.warning
    loc.last_seen = now
