"""What every source hands to the inventory (README "Inventory").

A source (directory, Vault KV v2) reads the world and returns one
``ScanResult`` per scan: one ``Candidate`` per location it looked at. A
location is either a parsed ``KeyFile``, a per-location ``KeyFileError``
(an invalid location, never an exception), or ``unchanged`` (its change
stamp matches what the inventory already knows, so it was not read).
A failure of the whole source (directory gone, Vault sealed) is raised as a
``KeydError`` instead, so that an outage is never mistaken for "every key
disappeared".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyd.errors import KeyFileError
from keyd.exposure import Exposure
from keyd.sources.keyfile import KeyFile
from keyd.text import storable


@dataclass(frozen=True)
class Candidate:
    """One location seen by a scan.

    ``ref`` is the file path or Vault ``mount/path``; ``version`` the KV
    version (Vault) and ``size``/``mtime_ns``/``inode`` the file stamp
    (directory), used for change detection. Exactly one of ``keyfile``,
    ``error`` is set, unless ``unchanged`` (then neither: the inventory's
    row stays as it is). ``warnings`` are advisory (e.g. file readable by
    group/other) and never make the location invalid.
    """

    ref: str
    version: int | None = None
    keyfile: KeyFile | None = None
    error: KeyFileError | None = None
    unchanged: bool = False
    size: int | None = None
    mtime_ns: int | None = None
    inode: int | None = None
    warnings: tuple[Exposure, ...] = ()

    def __post_init__(self) -> None:
        # The ref is the location's identity in the database, which stores
        # it escaped (``keyd.text.storable``): compare it in that form too.
        object.__setattr__(self, "ref", storable(self.ref))


@dataclass(frozen=True)
class ScanResult:
    """Everything one source saw in one scan (its configured name).

    Unchanged locations (change stamp matched; the directory source) come
    as bare refs rather than ``Candidate`` objects, so that a warm scan of
    10^5 unchanged files builds no object per file: ``quiet``, the refs of
    those with no warning (nearly all of them, no tuple each), and
    ``warned``, ``(ref, warnings)`` pairs of those with one (Vault reports
    its unchanged secrets as candidates). ``unchanged`` is both, as pairs.
    ``symlinks``: matching names that were symbolic links (directory
    source): a link's target can change where no watch on its directory
    sees it, so the daemon scans such a source in full every tick."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    quiet: list[str] = field(default_factory=list)
    warned: list[tuple[str, tuple[Exposure, ...]]] = field(default_factory=list)
    symlinks: int = 0

    @property
    def unchanged(self) -> list[tuple[str, tuple[Exposure, ...]]]:
        """Every unchanged location as ``(ref, warnings)`` (a new list:
        for reports and tests, not for a loop over 10^5 files)."""
        return [*((ref, ()) for ref in self.quiet), *self.warned]
