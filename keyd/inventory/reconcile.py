"""Candidates → rows: one source scan, one transaction (README "Inventory").

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
from collections.abc import Collection, Container
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import repeat
from operator import itemgetter
from typing import Final, cast

from keyd import progress
from keyd.errors import KeyFileError
from keyd.exposure import Exposure
from keyd.sources.base import Candidate, ScanResult
from keyd.sources.keyfile import NEVER_YEAR, KeyFile
from keyd.store.inventory import (
    LISTED,
    Engine,
    HeldRow,
    InventoryConflict,
    InventoryTx,
    SourceIndex,
    inventory_tx,
    record_source_failure,
)
from keyd.store.models import Key, KeyLocation
from keyd.vocab import ExpirySource, KeyStatus, LocationStatus, ProbeOutcome

log = logging.getLogger(__name__)

_ATTEMPTS = 3
SOURCE_HEARTBEAT: Final = timedelta(minutes=15)


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
    unheld: int = 0  # (zitadel) listed keys no file or Vault location holds
    gone: int = 0  # (zitadel) held keys ZITADEL no longer lists: rejected, "removed"
    # (a watched directory source in ``keyd run``) "full", "partial" (only
    # ``directories`` rescanned) or "watched" (inotify saw nothing: not read)
    scope: str = "full"
    directories: int = 0
    reason: str | None = None  # why this tick scanned it in full
    success_at: datetime | None = None  # the source's last_success_at after this scan


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Same rule as ``keyd.checks.expiry`` (strict: dead at the instant
    itself, docs/zitadel.md §2); restated here because checks sit above the
    inventory. Unknown and "never" (year 9999) are not expired."""
    return expires_at is not None and expires_at.year < NEVER_YEAR and now >= expires_at


def reconcile(
    engine: Engine,
    result: ScanResult,
    now: datetime,
    index: SourceIndex | None = None,
    *,
    directories: Collection[str] | None = None,
) -> SourceOutcome:
    """Apply one successful scan in one transaction; returns the counts.

    ``index``: the source's ``SourceIndex`` as read before the scan, whose
    ``held`` the scan was given as ``known`` (its stamps decided what is
    unchanged: every ``quiet`` or ``warned`` ref is one of its keys, each
    once), so that a warm scan reads it once and looks no ref up again;
    without one it is read inside the transaction. A race with another
    writer (``InventoryConflict``) rolls back and is retried on a fresh
    read, at most ``_ATTEMPTS`` times in all.

    ``directories``: the scan was partial, of the files directly in these
    directories only (``DirectorySource.scan_directories``); ``index`` must
    be scoped the same way, and only locations there can be "not seen any
    more". Every other location of the source stays as it is.
    """
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with inventory_tx(engine) as tx:
                known = index is not None and attempt == 1
                fresh = index if index is not None and known else tx.source_index(result.source, directories)
                outcome = _Reconciler(tx, result.source, now, known=known).run(result, fresh)
            break
        except InventoryConflict as exc:
            if attempt == _ATTEMPTS:
                raise
            log.warning("%s: attempt %d: %s; retrying", result.source, attempt, exc)
    if directories is not None:
        outcome.scope, outcome.directories = "partial", len(directories)
        log.info(
            "%s: %d director%s rescanned: %d locations (%d new, %d changed, %d missing, %d invalid)",
            outcome.source,
            len(directories),
            "y" if len(directories) == 1 else "ies",
            outcome.seen,
            outcome.new,
            outcome.changed,
            outcome.missing,
            outcome.invalid,
        )
        return outcome
    log.info(
        "%s: %d locations, %d keys (%d new, %d changed, %d missing, %d invalid)",
        outcome.source,
        outcome.seen,
        outcome.keys,
        outcome.new,
        outcome.changed,
        outcome.missing,
        outcome.invalid,
    )
    return outcome


def heartbeat(engine: Engine, source: str, now: datetime) -> datetime | None:
    """A watched source that nothing happened to was checked at ``now``:
    its state as after a successful scan (``mark_source_ok``: written at
    most every ``SOURCE_HEARTBEAT``). Returns its ``last_success_at``."""
    with inventory_tx(engine) as tx:
        return mark_source_ok(tx, source, now)


def record_failure(engine: Engine, source: str, error: BaseException, now: datetime) -> SourceOutcome:
    """The scan of ``source`` raised: record it, touch nothing else."""
    state = record_source_failure(engine, source, str(error), now)
    log.warning("%s: scan failed (%d in a row): %s", source, state.consecutive_failures, state.last_error)
    return SourceOutcome(source=source, ok=False, error=state.last_error, events=1)


_BATCH = 1000  # candidates per flush: bounds memory on a cold scan of 10^4 files
_KEY_PK = itemgetter(3)  # of a ``HeldRow``


def present_status(
    status: str, expires_at: datetime | None, last_probe_outcome: str | None, now: datetime, *, changed: bool
) -> str:
    """Status of a key that has a present location: the issuer's rejection
    stands until the content changes; otherwise active/expired by expiry."""
    if not changed and (
        status == KeyStatus.REJECTED
        or (status in (KeyStatus.MISSING, KeyStatus.INVALID) and last_probe_outcome == ProbeOutcome.REJECTED)
    ):
        return KeyStatus.REJECTED
    return KeyStatus.EXPIRED if is_expired(expires_at, now) else KeyStatus.ACTIVE


def derive_status(key: Key, by_status: dict[str, int], now: datetime, *, changed: bool) -> str:
    """A key's status from its locations everywhere (``location_status_counts``):
    a present key file decides; a key only a zitadel source lists is ``unheld``."""
    if by_status.get(LocationStatus.PRESENT):
        return present_status(key.status, key.expires_at, key.last_probe_outcome, now, changed=changed)
    if by_status.get(LISTED):
        return KeyStatus.UNHELD
    if by_status.get(LocationStatus.INVALID) and not by_status.get(LocationStatus.MISSING):
        return KeyStatus.INVALID
    return KeyStatus.MISSING


class _Reconciler:
    """One source's scan → rows. Unchanged locations take a fast path (no
    ORM objects, no write at all); everything else is handled in batches
    of ``_BATCH`` that are flushed and released (``InventoryTx.release``)."""

    def __init__(self, tx: InventoryTx, source: str, now: datetime, *, known: bool = False) -> None:
        self.tx = tx
        self.known = known  # the index is the one the scan compared its stamps with
        self.source = source
        self.now = now
        self.out = SourceOutcome(source=source)
        self.new_key_ids: set[str] = set()
        self.changed_key_ids: set[str] = set()
        self.affected: set[int] = set()  # key pks whose status must be derived again
        self.present_here: set[int] = set()  # key pks with a present location here
        self.unchanged_keys: set[int] = set()
        self._pending: list[tuple[Key, bool]] = []  # (key, present here) until flushed
        self._pending_cands: list[Candidate] = []  # locations to look at, up to _BATCH
        self._writing = f"writing {source}"  # progress tasks (/healthz, the CLI)
        self._settling = f"settling {source}"

    def run(self, result: ScanResult, index: SourceIndex) -> SourceOutcome:
        held = dict(index.held)  # what is left of it after the scan was not seen
        odd = [*result.warned, *((c.ref, c.warnings) for c in result.candidates if c.unchanged)]
        slow = self._skip_unchanged(odd, held, index)
        slow += self._skip_quiet(result.quiet, held, index)
        fresh = [c for c in result.candidates if not c.unchanged]
        slow_refs = {c.ref for c in slow}
        skipped = {c.ref for c in fresh if c.ref in index.held and c.ref not in held} - slow_refs
        unseen = set(index.other)
        todo = [*slow, *_one_per_ref(fresh, self.source, taken=skipped)]
        progress.begin(self._writing, len(todo), "files")  # a cold scan: every file, in batches
        try:
            for cand in todo:
                self.out.seen += not cand.unchanged  # the unchanged ones are counted already
                self.out.warnings += bool(cand.warnings)
                held.pop(cand.ref, None)
                unseen.discard(cand.ref)
                self._pending_cands.append(cand)
                if len(self._pending_cands) == _BATCH:
                    self._slow()
            self._slow()
        finally:
            progress.end(self._writing)
        self._gone(sorted(unseen.union(held)))  # what the scan did not see any more
        self._settle_keys()
        self._source_ok()
        self.out.events += self.tx.pending_events
        self.tx.release()
        return self.out

    def _skip_unchanged(
        self, unchanged: list[tuple[str, tuple[Exposure, ...]]], held: dict[str, HeldRow], index: SourceIndex
    ) -> list[Candidate]:
        """The fast path for the few unchanged locations that come with
        warnings (or as candidates): one whose row already says all the
        scan saw (present, holding a key, same warnings) costs a dict
        lookup and no SQL, no object. Returns the ones whose row needs a look."""
        slow: list[Candidate] = []
        keys = self.unchanged_keys
        fast = exposed = 0
        for ref, warnings in unchanged:
            row = held.pop(ref, None)
            if row is not None and (
                index.warnings(ref) == warnings if warnings or index.warned.get(ref) else True
            ):
                keys.add(row[3])
                fast += 1
                if warnings:
                    exposed += 1
            else:
                slow += self._odd(ref, warnings, row, index)
        self.out.seen += len(unchanged)
        self.out.unchanged += fast
        self.out.warnings += exposed
        self.present_here |= keys
        return slow

    def _skip_quiet(self, quiet: list[str], held: dict[str, HeldRow], index: SourceIndex) -> list[Candidate]:
        """The fast path of a warm scan, for the unchanged locations without
        a warning (nearly all of them), in bulk: their rows are taken out of
        ``held`` and their keys collected without a Python loop per file.
        Only the rare exceptions (no held row; a row that still has a
        warning the file no longer earns) are looked at one by one."""
        if not quiet:
            return []
        # the held rows that have a warning, still unseen: after taking
        # the quiet ones out, those gone from ``held`` were among them
        warned = [ref for ref, text in index.warned.items() if text and ref in held]
        slow: list[Candidate] = []
        if self.known and len(quiet) == len(held):
            # the scan was given ``index.held`` as ``known``: its quiet refs
            # are keys of it, each once (``DirectorySource``'s contract), so
            # as many as are left means all that are left, and there is
            # nothing to look up 10^5 times again (the walk just did)
            keys = index.keys if len(held) == len(index.held) else set(map(_KEY_PK, held.values()))
            held.clear()
            return self._quiet_rows(len(quiet), keys, warned, slow)
        popped = list(map(held.pop, quiet, repeat(None)))
        if None in popped:
            for ref, row in zip(quiet, popped, strict=True):
                if row is None:
                    slow += self._odd(ref, (), None, index)
            popped = [row for row in popped if row is not None]
        rows = cast("list[HeldRow]", popped)  # no None left
        stale = [ref for ref in warned if ref not in held]  # its row says "warned": rewrite it
        return self._quiet_rows(len(quiet), set(map(_KEY_PK, rows)), stale, slow, len(rows))

    def _quiet_rows(
        self, seen: int, keys: set[int], stale: list[str], slow: list[Candidate], rows: int | None = None
    ) -> list[Candidate]:
        """Count ``seen`` quiet locations (``rows`` of them held, all by
        default), holding ``keys``; ``stale``: those whose row still has a
        warning the file no longer earns (to rewrite)."""
        slow.extend(Candidate(ref=ref, unchanged=True) for ref in stale)
        self.unchanged_keys |= keys
        self.present_here |= keys
        self.out.seen += seen
        self.out.unchanged += (seen if rows is None else rows) - len(stale)
        return slow

    def _odd(
        self, ref: str, warnings: tuple[Exposure, ...], row: HeldRow | None, index: SourceIndex
    ) -> list[Candidate]:
        """An unchanged location the fast path cannot skip: its row needs a
        look (as a candidate), or there is no row to look at."""
        if row is not None or ref in index.other:
            return [Candidate(ref=ref, unchanged=True, warnings=warnings)]
        log.debug("%s: %s reported unchanged but unknown; re-read next scan", self.source, ref)
        self.out.warnings += bool(warnings)
        return []

    def _slow(self) -> None:
        """One batch of locations whose rows may change, loaded by ref."""
        batch, self._pending_cands = self._pending_cands, []
        if not batch:
            return
        locs = self.tx.locations_by_ref(self.source, (c.ref for c in batch))
        keys = self.tx.keys_by_key_id(c.keyfile.key_id for c in batch if c.keyfile)
        for cand in batch:
            loc = locs.get(cand.ref)
            if cand.unchanged:
                self._unchanged(cand, loc)
            elif cand.keyfile is not None:
                self._found_isolated(cand, cand.keyfile, loc, keys)
            else:
                self._invalid(cand, loc)
        self._release()
        progress.advance(self._writing, len(batch))

    def _found_isolated(
        self, cand: Candidate, kf: KeyFile, loc: KeyLocation | None, keys: dict[str, Key]
    ) -> None:
        try:
            self._found(cand, kf, loc, keys)
        except Exception as exc:  # noqa: BLE001 - one location never stops the scan
            log.exception("%s: %s: unexpected error", self.source, cand.ref)
            self._invalid(
                replace(
                    cand,
                    keyfile=None,
                    error=KeyFileError(
                        cand.ref,
                        f"internal error while recording it ({type(exc).__name__}); "
                        "run with --debug and report it",
                    ),
                ),
                loc,
            )

    def _release(self) -> None:
        """Flush (new keys get pks), remember pks, write events, forget objects."""
        self.out.events += self.tx.pending_events
        self.tx.flush()
        for key, present in self._pending:
            self.affected.add(key.id)
            if present:
                self.present_here.add(key.id)
        self._pending.clear()
        self.tx.release()

    def _touch(self, key: Key | None, *, present: bool = False, seen: bool = False) -> None:
        if key is not None:
            if seen:
                key.last_seen = self.now
            self._pending.append((key, present))

    # --- per location ---------------------------------------------------

    def _unchanged(self, cand: Candidate, loc: KeyLocation | None) -> None:
        if loc is None:
            return
        self.out.unchanged += 1
        loc.last_seen = self.now
        loc.warning = cand.warnings
        self._touch(loc.key, present=loc.status == LocationStatus.PRESENT, seen=True)

    def _found(self, cand: Candidate, kf: KeyFile, loc: KeyLocation | None, keys: dict[str, Key]) -> None:
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
                if loc.key is not None:  # the file now holds another key
                    self._event("location.replaced", key, ref=cand.ref, old_key_id=loc.key.key_id)
                    self._touch(loc.key)
                loc.key = key
            if loc.status != LocationStatus.PRESENT:
                self._event("location.returned", key, ref=cand.ref, was=loc.status)
        _fill_location(loc, cand, kf.content_hash, LocationStatus.PRESENT, None, self.now)
        self._touch(key, present=True, seen=True)

    def _invalid(self, cand: Candidate, loc: KeyLocation | None) -> None:
        problem = cand.error.problem if cand.error is not None else "no key and no error"
        self.out.invalid += 1
        if loc is None:
            loc = KeyLocation(source=self.source, ref=cand.ref, first_seen=self.now)
            self.tx.add(loc)
        if loc.status != LocationStatus.INVALID or loc.last_error != problem:
            self._event("location.invalid", loc.key, ref=cand.ref, error=problem)
        # stamps dropped: an invalid file is re-read every scan (a chmod
        # that fixes it changes no mtime)
        _fill_location(loc, cand, None, LocationStatus.INVALID, problem, self.now, stamps=False)
        self._touch(loc.key)

    def _gone(self, refs: list[str]) -> None:
        """Locations not seen any more: missing (already missing ones are
        not even read: their keys' status was settled when they went)."""
        for start in range(0, len(refs), _BATCH):
            for loc in self.tx.locations_by_ref(self.source, refs[start : start + _BATCH]).values():
                if loc.status != LocationStatus.MISSING:
                    self._event("location.missing", loc.key, ref=loc.ref, was=loc.status)
                    loc.status = LocationStatus.MISSING
                self._touch(loc.key)
            self._release()

    # --- keys -------------------------------------------------------------

    def _new_key(self, cand: Candidate, kf: KeyFile) -> Key:
        key = Key(key_id=kf.key_id, first_seen=self.now, last_seen=self.now, probe_failures=0)
        _fill_key(key, kf, self.now)
        self.tx.add(key)
        self.new_key_ids.add(kf.key_id)
        self.out.new += 1
        self._event(
            "key.new",
            key,
            ref=cand.ref,
            type=kf.kind,
            principal=kf.principal,
            fingerprint=kf.fingerprint,
            expires_at=kf.expires_at,
            status=key.status,
        )
        return key

    def _change_key(self, cand: Candidate, kf: KeyFile, key: Key) -> None:
        before = {
            "old_fingerprint": key.fingerprint,
            "old_expires_at": key.expires_at,
            "old_status": key.status,
        }
        _fill_key(key, kf, self.now)
        key.next_probe_at = None  # re-armed: probe the new content (store.probes contract)
        key.probe_failures = 0
        key.last_error = None
        if kf.key_id in self.new_key_ids:
            return  # two files of one new key disagree: the later one wins, no event
        self.changed_key_ids.add(kf.key_id)
        self.out.changed += 1
        self._event(
            "key.changed", key, ref=cand.ref, fingerprint=kf.fingerprint, expires_at=kf.expires_at, **before
        )

    def _settle_keys(self) -> None:
        """Derive each touched key's status from its locations everywhere.
        Keys seen only through unchanged files are checked cheaply first and
        loaded only if their status has to move (e.g. active → expired)."""
        for state in self.tx.unsettled_key_states(self.now, self.source):
            if state.id not in self.unchanged_keys or state.id in self.affected:
                continue
            target = present_status(
                state.status, state.expires_at, state.last_probe_outcome, self.now, changed=False
            )
            if target != state.status:
                self.affected.add(state.id)
        pks = sorted(self.affected)
        progress.begin(self._settling, len(pks), "keys")
        try:
            for start in range(0, len(pks), _BATCH):
                chunk = pks[start : start + _BATCH]
                counts = self.tx.location_status_counts(chunk)
                for key in self.tx.keys_by_pk(chunk):
                    self._transition(key, self._target(key, counts.get(key.id, {})))
                self._release()
                progress.advance(self._settling, len(chunk))
        finally:
            progress.end(self._settling)
        self.out.keys = len(self.present_here)

    def _target(self, key: Key, by_status: dict[str, int]) -> str:
        return derive_status(key, by_status, self.now, changed=key.key_id in self.changed_key_ids)

    def _transition(self, key: Key, target: str) -> None:
        old = key.status
        if old == target:
            return
        key.status = target
        key.updated_at = self.now
        if key.key_id in self.new_key_ids:
            return
        if target in (KeyStatus.MISSING, KeyStatus.INVALID):
            self.out.missing += 1
            kind = f"key.{target}"
        elif old in (KeyStatus.MISSING, KeyStatus.INVALID):
            self.out.returned += 1
            kind = "key.returned"
        else:
            kind = "key.expired" if target == KeyStatus.EXPIRED else "key.status"
        self._event(kind, key, was=old, status=target)

    def _source_ok(self) -> None:
        self.out.success_at = mark_source_ok(self.tx, self.source, self.now)

    def _event(self, kind: str, key: Key | None, **detail: object) -> None:
        self.tx.event(self.now, kind, source=self.source, key=key, detail=dict(detail))


def mark_source_ok(tx: InventoryTx, source: str, now: datetime) -> datetime | None:
    """A successful scan: the source's state is reset (``source.recovered``).

    Unchanged rows are never rewritten (no per-row ``last_seen``): a present
    location was seen at its source's ``last_success_at``, a heartbeat
    written at most every ``SOURCE_HEARTBEAT`` while nothing else changes,
    so a warm scan of an unchanged tree writes nothing at all. Returns the
    ``last_success_at`` the row holds afterwards."""
    state = tx.source_state(source)
    if state.consecutive_failures:
        tx.event(
            now,
            "source.recovered",
            source=source,
            detail={"after_failures": state.consecutive_failures, "last_error": state.last_error},
        )
    elif (
        state.last_success_at is not None
        and state.last_error is None
        and timedelta(0) <= now - state.last_success_at < SOURCE_HEARTBEAT
    ):
        return state.last_success_at
    state.last_attempt_at = state.last_success_at = now
    state.last_error = None
    state.consecutive_failures = 0
    return now


def _one_per_ref(
    candidates: list[Candidate], source: str, taken: Container[str] = frozenset()
) -> list[Candidate]:
    """Two names can share one stored ref (``bad\xff.json`` and a file
    literally named ``bad\\xff.json``): the first one seen stands for both
    (an unchanged location, in ``taken``, before any other), instead of a
    unique-constraint failure that would lose the whole scan."""
    seen: set[str] = set()
    kept: list[Candidate] = []
    for cand in candidates:
        if cand.ref in seen or cand.ref in taken:
            log.warning(
                "%s: %s: seen twice (names that differ only in undecodable bytes); keeping the first",
                source,
                cand.ref,
            )
            continue
        seen.add(cand.ref)
        kept.append(cand)
    return kept


def _fill_key(key: Key, kf: KeyFile, now: datetime) -> None:
    key.kind = kf.kind
    key.principal = kf.principal
    key.algorithm = kf.algorithm
    key.key_size = kf.key_size
    key.fingerprint = kf.fingerprint
    if kf.expires_at is not None or key.expiry_source != ExpirySource.ZITADEL:
        key.expires_at, key.expiry_source = kf.expires_at, None  # else keep ZITADEL's expiry
    key.content_hash = kf.content_hash
    key.status = KeyStatus.EXPIRED if is_expired(key.expires_at, now) else KeyStatus.ACTIVE
    key.updated_at = now


def _fill_location(
    loc: KeyLocation,
    cand: Candidate,
    content_hash: str | None,
    status: str,
    error: str | None,
    now: datetime,
    *,
    stamps: bool = True,
) -> None:
    """Set what the scan found; a row already saying exactly that is left
    unwritten (its ``last_seen`` is its source's last successful scan)."""
    found = (
        status,
        *((cand.size, cand.mtime_ns, cand.inode) if stamps else (None,) * 3),
        cand.version,
        content_hash,
        error,
        cand.warnings,
    )
    if loc.last_seen is not None and found == (
        loc.status,
        loc.size,
        loc.mtime_ns,
        loc.inode,
        loc.version,
        loc.content_hash,
        loc.last_error,
        loc.warning,
    ):
        return
    (
        loc.status,
        loc.size,
        loc.mtime_ns,
        loc.inode,
        loc.version,
        loc.content_hash,
        loc.last_error,
        loc.warning,
    ) = found
    loc.last_seen = now
