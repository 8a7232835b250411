"""The daemon's change-driven scan of directory sources (docs/daemon.md,
"Watched directory sources").

``WatchedScans`` lives as long as one ``Services`` (so a SIGHUP starts it
afresh) and keeps one ``DirectoryWatch`` per directory source with
``watch = true``. Each scan tick asks it to scan such a source
(``scan``), and it does one of three things:

* **watched** — inotify saw nothing and the root still stats as a
  directory: nothing is walked, read or reconciled; the source counts as
  checked now (``heartbeat``: a write at most every ``SOURCE_HEARTBEAT``);
* **partial** — file events in known directories: only those directories
  are listed (not recursively), against the part of the source index that
  lies in them, and only their locations can turn missing;
* **full** — the old walk of the whole tree, with the watches rebuilt
  before it (the walk adds each directory's watch just before listing it):
  at the first tick, after ``request_full`` (leadership gained), every
  ``daemon.full_scan_interval``, and whenever the watcher is in doubt
  (a directory created, deleted or moved, the root touched, an event
  queue overflow, a watch that could not be added), when the last scan of
  the source failed, and while it holds symlinked key files (a link's
  target can change in a directory no watch covers).

An active key whose expiry passed while its source was quiet is found by
one index seek per tick (``next_active_expiry``, cached until that
instant) and its directory rescanned, so it still turns ``expired`` on
time. Where inotify cannot be used, the source is scanned in full every
tick, as with ``watch = false``, with one warning; watching is tried again
at the next periodic full scan.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyd.clock import Clock
from keyd.config import Config, DirectorySourceConfig
from keyd.errors import KeydError, StoreError
from keyd.inventory.reconcile import SOURCE_HEARTBEAT, SourceOutcome, heartbeat, reconcile, record_failure
from keyd.inventory.scan import scan_source
from keyd.sources.base import ScanResult
from keyd.sources.directory import DirectorySource, DirectoryVanished
from keyd.sources.watch import DirectoryWatch
from keyd.store.inventory import Engine, expired_active_refs, next_active_expiry, source_index

log = logging.getLogger(__name__)

SCOPES = ("watched", "partial", "full")


@dataclass
class _Source:
    """What the watcher knows about one directory source across ticks."""

    watch: DirectoryWatch
    full_reason: str | None = "first scan"  # the next tick scans in full, and why
    full_due: datetime | None = None  # the next periodic full scan
    symlinks: bool = False  # the last scan saw symlinked key files
    success_at: datetime | None = None  # last_success_at as the database holds it
    warned: bool = False  # "not watched" was logged
    last: str = "none"  # what the last tick did (/healthz)
    last_reason: str | None = None


@dataclass
class _Ticks:
    """CPU of the scan ticks by what they did (the most a tick did:
    full > partial > watched), for ``/healthz`` and bench/scale.py."""

    runs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCOPES, 0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SCOPES, 0.0))
    last_cpu: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(SCOPES, None))


class WatchedScans:
    """See the module docstring. ``full_scan_interval`` comes from
    ``daemon.full_scan_interval``; ``factory`` replaces inotify (tests)."""

    def __init__(self, full_scan_interval: timedelta, *, factory: Any = None) -> None:
        self.full_scan_interval = full_scan_interval
        self._factory = factory
        self._sources: dict[str, _Source] = {}
        self._requests = 0  # request_full() calls (another thread), and those seen
        self._requests_seen = 0
        self._request_reason = ""
        self._next_expiry: datetime | None = None
        self._expiry_known = False
        self._lock = threading.Lock()
        self.ticks = _Ticks()

    # --- control ----------------------------------------------------------

    def request_full(self, reason: str) -> None:
        """Scan every watched source in full at its next tick (any thread)."""
        self._request_reason = reason
        self._requests += 1

    def close(self) -> None:
        with self._lock:
            for state in self._sources.values():
                state.watch.close()
            self._sources.clear()

    def tick(self, outcomes: Iterable[SourceOutcome], cpu_seconds: float) -> None:
        """Account one scan tick's CPU under the most it did."""
        scopes = {"full" if o.reason else o.scope for o in outcomes if o.reason or o.scope != "full"}
        scope = next((s for s in reversed(SCOPES) if s in scopes), None)
        if scope is None:
            return  # no directory source was watched this tick
        self.ticks.runs[scope] += 1
        self.ticks.cpu[scope] += cpu_seconds
        self.ticks.last_cpu[scope] = cpu_seconds

    def to_json(self) -> dict[str, Any]:
        """``/healthz``'s ``watch``: per source what the last tick did and
        how many directories are watched; per kind of tick, runs and CPU."""
        with self._lock:
            sources = {
                name: {
                    "watching": state.watch.watching,
                    "unwatched_because": state.watch.failed,
                    "last": state.last,
                    "last_full_reason": state.last_reason,
                }
                for name, state in sorted(self._sources.items())
            }
        return {
            "full_scan_interval_seconds": self.full_scan_interval.total_seconds(),
            "sources": sources,
            "ticks": {
                scope: {
                    "runs": self.ticks.runs[scope],
                    "cpu_seconds": round(self.ticks.cpu[scope], 3),
                    "last_cpu_seconds": None
                    if self.ticks.last_cpu[scope] is None
                    else round(self.ticks.last_cpu[scope] or 0.0, 3),
                }
                for scope in SCOPES
            },
        }

    # --- one tick ---------------------------------------------------------

    def expiring(self, engine: Engine, config: Config, now: datetime) -> dict[str, set[str]]:
        """``{source: directories}`` holding an active key whose expiry has
        passed (rescanned so its status moves); one index seek, and none
        until the earliest expiry known comes."""
        if self._expiry_known and (self._next_expiry is None or now < self._next_expiry):
            return {}
        self._next_expiry, self._expiry_known = next_active_expiry(engine), True
        if self._next_expiry is None or now < self._next_expiry:
            return {}
        self._expiry_known = False  # ask again next tick: the rescan settles them
        watched = [c.name for c in config.sources if isinstance(c, DirectorySourceConfig) and c.watch]
        return {
            source: {ref.rpartition("/")[0] for ref in refs}
            for source, refs in expired_active_refs(engine, watched, now).items()
        }

    def scan(
        self,
        cfg: DirectorySourceConfig,
        engine: Engine,
        clock: Clock,
        config: Config,
        validated: Container[str],
        expiring: set[str],
    ) -> SourceOutcome:
        """Scan one directory source as its watcher says (module docstring)."""
        if not cfg.watch:
            log.info("%s: full scan: watch = false", cfg.name)
            outcome = scan_source(cfg, engine, clock, config, None, validated)
            outcome.reason = "watch = false"
            return outcome
        now = clock.now()
        source = DirectorySource(cfg, config.timezone)
        state = self._state(cfg, source)
        reason, rebuild = self._full_reason(state, now)
        if reason is None:
            changes = state.watch.drain()
            reason, rebuild = changes.full, True
            if reason is None:
                dirs = changes.directories | {d for d in expiring if _under(d, source.root)}
                if dirs:
                    return self._partial(state, source, dirs, engine, clock, config, validated)
                if _is_directory(source.root):
                    return self._idle(state, cfg.name, engine, now)
                reason = f"root {source.root} is not a directory any more"
        return self._full(state, cfg, reason, rebuild, engine, clock, config, validated)

    def _state(self, cfg: DirectorySourceConfig, source: DirectorySource) -> _Source:
        with self._lock:
            state = self._sources.get(cfg.name)
            if state is None:
                watch = DirectoryWatch(source.root, source.relevant, factory=self._factory)
                state = self._sources[cfg.name] = _Source(watch)
            return state

    def _full_reason(self, state: _Source, now: datetime) -> tuple[str | None, bool]:
        """(why this tick must scan in full, whether to rebuild the watches)."""
        periodic = state.full_due is not None and now >= state.full_due
        if self._requests != self._requests_seen:
            self._requests_seen = self._requests
            for other in self._sources.values():
                other.full_reason = other.full_reason or self._request_reason
        if state.full_reason is not None:
            return state.full_reason, True
        if periodic:
            return "full_scan_interval", True
        if state.watch.failed is not None:
            return f"not watched: {state.watch.failed}", False  # tried again at the next periodic one
        if state.symlinks:
            return "symlinked key files", True
        return None, False

    def _idle(self, state: _Source, name: str, engine: Engine, now: datetime) -> SourceOutcome:
        if state.success_at is None or not timedelta(0) <= now - state.success_at < SOURCE_HEARTBEAT:
            state.success_at = heartbeat(engine, name, now)
        state.last, state.last_reason = "watched", None
        log.debug("%s: watched, no change", name)
        return SourceOutcome(source=name, scope="watched", success_at=state.success_at)

    def _partial(
        self,
        state: _Source,
        source: DirectorySource,
        dirs: set[str],
        engine: Engine,
        clock: Clock,
        config: Config,
        validated: Container[str],
    ) -> SourceOutcome:
        name = source.name
        try:
            index = source_index(engine, name, dirs)
            result = source.scan_directories(dirs, index.held, validated)
            if result.symlinks:
                state.symlinks = True  # from the next tick on: full
        except DirectoryVanished as exc:  # the tree changed shape since the events
            return self._full(state, source.cfg, str(exc), True, engine, clock, config, validated)
        except StoreError:
            raise
        except KeydError as exc:
            state.full_reason = "the last partial scan failed"
            state.last = "partial (failed)"
            failed = record_failure(engine, name, exc, clock.now())
            failed.scope, failed.directories = "partial", len(dirs)
            return failed
        outcome = reconcile(engine, result, clock.now(), index, directories=dirs)
        self._expiry_known = False  # keys may have come or changed
        state.success_at = outcome.success_at
        state.last, state.last_reason = f"partial ({len(dirs)} directories)", None
        return outcome

    def _full(
        self,
        state: _Source,
        cfg: DirectorySourceConfig,
        reason: str,
        rebuild: bool,
        engine: Engine,
        clock: Clock,
        config: Config,
        validated: Container[str],
    ) -> SourceOutcome:
        now = clock.now()
        if rebuild:
            state.watch.begin()
        hook = state.watch.add if rebuild and state.watch.failed is None else None
        log.info("%s: full scan: %s", cfg.name, reason)
        seen: list[ScanResult] = []
        outcome = scan_source(
            cfg, engine, clock, config, None, validated, on_directory=hook, on_result=seen.append
        )
        if rebuild:
            self._log_watching(state, cfg.name)
        if outcome.ok:
            state.full_reason = None
            state.full_due = now + self.full_scan_interval
            state.symlinks = bool(seen and seen[0].symlinks)
            state.success_at = outcome.success_at
        else:
            state.full_reason = "the last scan failed"
        self._expiry_known = False  # keys may have come or changed
        state.last, state.last_reason = "full", reason
        outcome.reason = reason
        return outcome

    def _log_watching(self, state: _Source, name: str) -> None:
        failed = state.watch.failed
        if failed is not None and not state.warned:
            log.warning(
                "%s: not watched, so every scan tick walks it in full (tried again every "
                "daemon.full_scan_interval): %s",
                name,
                failed,
            )
            state.warned = True
        elif failed is None and state.warned:
            log.info("%s: watched again (%d directories)", name, state.watch.watching)
            state.warned = False


def _under(directory: str, root: str) -> bool:
    return directory == root or directory.startswith(root + os.sep)


def _is_directory(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False
