"""Which directories of a directory source changed (``keyd run``): inotify.

One ``DirectoryWatch`` per watched directory source. ``begin()`` starts a
fresh inotify instance before a full walk, and the walk calls ``add(path)``
for every directory it descends, just before listing it (the walk's own
rules: dot-directories and symlinked directories are not descended), so a
change made while the walk runs is seen by the next ``drain()``.

``drain()`` reads what happened since, without blocking, and sorts it:

* file-level events (created, deleted, moved in or out, written, chmod'ed)
  on a name the source's pattern matches, or on any dot-name (a Kubernetes
  ``..data`` swap) → that directory needs a *partial* rescan;
* anything about the tree's shape or doubtful — a directory created,
  deleted or moved, a watched directory itself deleted or moved (the root
  included), an unmount, ``IN_Q_OVERFLOW``, ``IN_IGNORED`` → a *full* scan
  (and ``begin()`` again).

When inotify cannot be used (not Linux, ``inotify_simple`` missing, the
per-user limit ``fs.inotify.max_user_watches`` or ``max_user_instances``
reached), ``failed`` says why and the caller scans in full instead. inotify
sees only changes made through this kernel: a network filesystem changed
from another host (NFS, CIFS) shows none, hence ``watch = false`` and the
daemon's periodic full scan (``daemon.full_scan_interval``).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

try:  # present wherever keyd is installed normally
    from inotify_simple import INotify
except (ImportError, OSError):  # not Linux, or no libc inotify
    INotify = None

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

#: What a watch asks for (IN_Q_OVERFLOW, IN_IGNORED, IN_UNMOUNT always come).
MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CLOSE_WRITE
    | IN_MODIFY
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_SHAPE = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_SELF = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT


@dataclass
class Changes:
    """What one ``drain()`` found: ``full`` (why the whole source must be
    scanned) or the ``directories`` to rescan (none: nothing changed)."""

    full: str | None = None
    directories: set[str] = field(default_factory=set)
    events: int = 0


class DirectoryWatch:
    """The inotify watches of one directory source (module docstring).

    ``relevant(directory, name)``: whether a file event on ``name`` in
    ``directory`` can change what a scan sees (the source's pattern)."""

    def __init__(self, root: str, relevant: Callable[[str, str], bool], *, factory: Any = None) -> None:
        self.root = root
        self._relevant = relevant
        self._factory = factory if factory is not None else INotify
        self._inotify: Any = None
        self._dirs: dict[int, str] = {}
        self._full: str | None = "not watched yet"
        self.failed: str | None = None  # why this source cannot be watched now

    @property
    def watching(self) -> int:
        """Directories watched now."""
        return len(self._dirs) if self._inotify is not None else 0

    def begin(self) -> None:
        """Drop every watch and start a fresh instance (before a full walk)."""
        self.close()
        self.failed = None
        self._full = None
        if self._factory is None:
            self.failed = "inotify is not available here (inotify_simple cannot be loaded)"
            return
        try:
            self._inotify = self._factory(nonblocking=True)
        except OSError as exc:
            self.failed = _why(exc, "cannot start inotify")

    def add(self, directory: str) -> None:
        """Watch ``directory`` (the walk's ``on_directory`` hook; never raises)."""
        if self._inotify is None:
            return
        mask = MASK if directory == self.root else MASK | IN_DONT_FOLLOW
        try:
            wd = self._inotify.add_watch(directory, mask)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone before the walk lists it: the walk skips it, its parent's watch saw it go
        except OSError as exc:
            self.failed = _why(exc, f"cannot watch {directory}")
            self.close()
            return
        self._dirs[wd] = directory

    def drain(self) -> Changes:
        """Everything that happened since the last drain (non-blocking)."""
        if self._inotify is None:
            return Changes(full=self.failed or self._full or "not watched")
        try:
            events = self._inotify.read(timeout=0)
        except OSError as exc:
            self.failed = _why(exc, "cannot read inotify events")
            self.close()
            return Changes(full=self.failed)
        changes = Changes(full=self._full, events=len(events))
        for event in events:
            reason = self._event(event, changes.directories)
            if reason is not None and changes.full is None:
                changes.full = reason
        self._full = changes.full  # sticky until the next begin()
        return changes

    def _event(self, event: Any, dirty: set[str]) -> str | None:
        """Sort one event: a reason for a full scan, or a dirty directory."""
        mask, name = event.mask, event.name
        if mask & IN_Q_OVERFLOW:
            return "overflow (inotify event queue full)"
        directory = self._dirs.get(event.wd)
        if mask & IN_IGNORED:
            self._dirs.pop(event.wd, None)
            return f"watch on {directory or 'a directory'} removed"
        if directory is None:
            return None  # a watch already dropped (its IN_IGNORED decided)
        if mask & _SELF:
            return (
                f"{'root' if directory == self.root else 'directory'} {directory} deleted, moved or unmounted"
            )
        if not name or name.startswith("."):
            dirty.add(directory)  # chmod of the directory itself; a dot-name (..data swap)
        elif mask & IN_ISDIR:
            if mask & _SHAPE:
                return f"directory {os.path.join(directory, name)} created, deleted or moved"
            # a subdirectory's chmod: its own watch reports it too
        elif self._relevant(directory, name):
            dirty.add(directory)
        return None

    def close(self) -> None:
        inotify, self._inotify = self._inotify, None
        self._dirs = {}
        if inotify is not None:
            try:
                inotify.close()
            except OSError as exc:
                log.debug("closing inotify for %s: %s", self.root, exc)


def _why(exc: OSError, doing: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{doing}: the inotify watch limit is reached (raise sysctl fs.inotify.max_user_watches)"
    if exc.errno == errno.EMFILE:
        return f"{doing}: too many inotify instances (raise sysctl fs.inotify.max_user_instances)"
    return f"{doing}: {exc.strerror or exc}"
