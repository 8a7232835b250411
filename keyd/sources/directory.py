"""Key files in a directory tree: one file = one key (README "Inventory").

``DirectorySource(cfg, tz).scan(known, validated)`` walks ``cfg.path``
recursively and returns one ``Candidate`` per file whose *name* matches
``cfg.pattern`` at any depth (``**/pattern`` semantics; a pattern that
contains ``/`` is matched against the path relative to the root instead).
Names starting with ``.`` are skipped, as shell globs do; this also keeps
Kubernetes secret volumes (``..data/``) from showing every key twice.

Contract:

* Whole-source failure (root missing, not a directory, a directory that
  cannot be listed) raises ``DirectoryUnavailable``: an empty or partial
  listing would otherwise turn every key under it into "missing".
* Every per-file problem (unreadable, junk, oversized, a directory named
  ``*.json``, a symlink leaving the root) is an *invalid* candidate with an
  operator-readable ``KeyFileError``; never an exception.
* Symlinks are followed only when their target resolves inside the root.
  Symlinked *directories* are not descended (no loops, no duplicates).
* A file or its directory readable by other users, or by a group that is
  not keyd's own (``exposure``), gets an ``Exposure`` warning (and
  a log line); keyd still uses it.
* Incremental: a file whose (size, mtime_ns, inode) equals ``known[ref]``
  is not opened (``Candidate.unchanged``).

Validation cost (measured on this machine, RSA-2048): parsing with
``validate="none"`` ~0.05 ms, ``"quick"`` (one sign+verify) ~0.65 ms,
``"full"`` (OpenSSL's prime checks) ~36 ms. Full validation therefore runs
once per *new content*, never per file per scan: a changed/new file is
parsed cheaply first to learn its ``content_hash`` (which covers the
SHA-256 of the PEM text); if that hash is in ``validated`` (content the
inventory has already accepted after full validation) the key is loaded
with ``"quick"``, otherwise with ``"full"``. ``"quick"`` rather than
``"none"`` for known content costs well under a millisecond and keeps the
check honest even if a row's hash came from a less careful writer.
Unchanged files cost one ``stat``; ``keyfile``'s in-process cache makes a
PEM shared by many files load once per process.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, tzinfo
from fnmatch import fnmatchcase

from keyd import progress
from keyd.config import DirectorySourceConfig
from keyd.errors import EXIT_UNAVAILABLE, KeydError, KeyFileError
from keyd.exposure import Exposure
from keyd.sources.base import Candidate, ScanResult
from keyd.sources.keyfile import KeyFile, Validation, parse_keyfile, read_bounded
from keyd.text import path_text

log = logging.getLogger(__name__)


class DirectoryUnavailable(KeydError):
    """The source directory cannot be scanned as a whole (gone, not a
    directory, not listable). Retryable: keys under it are left alone."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"directory {path}: {problem}")


@dataclass(frozen=True)
class FileStamp:
    """What decides "unchanged" without reading the file."""

    size: int
    mtime_ns: int
    inode: int


class DirectorySource:
    """Scan one configured directory; see the module docstring."""

    def __init__(self, cfg: DirectorySourceConfig, tz: tzinfo = UTC) -> None:
        self.cfg = cfg
        self.tz = tz
        self.root = str(cfg.path)
        pattern = cfg.pattern
        while pattern.startswith("**/"):
            pattern = pattern[3:]
        self._pattern = pattern or "*"
        self._dir_modes: dict[str, str | None] = {}  # directory -> its exposure

    @property
    def name(self) -> str:
        return self.cfg.name

    def scan(
        self, known: Mapping[str, FileStamp] | None = None, validated: Container[str] = frozenset()
    ) -> ScanResult:
        """One pass over the tree (raises ``DirectoryUnavailable``)."""
        known = known or {}
        self._dir_modes = {}
        self._check_root()
        root_real = os.path.realpath(self.root)
        paths = list(self._matching_paths())
        task = f"reading {self.name}"
        progress.begin(task, len(paths), "files")
        candidates = []
        for path, is_link in paths:
            candidates.append(self._isolated(path, is_link, root_real, known, validated))
            progress.advance(task)
        progress.end(task)
        found = [c for c in candidates if c is not None]
        exposed = sum(1 for c in found if c.warnings)
        if exposed:
            log.warning(
                "%s: %d key file(s) readable beyond keyd's group (see keyd status)", self.name, exposed
            )
        return ScanResult(source=self.name, candidates=found)

    # --- walking ---------------------------------------------------------

    def _check_root(self) -> None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise DirectoryUnavailable(self.root, "does not exist") from None
        except PermissionError:
            raise DirectoryUnavailable(self.root, "permission denied") from None
        except OSError as exc:
            raise DirectoryUnavailable(self.root, f"cannot stat: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise DirectoryUnavailable(self.root, "is not a directory")

    def _matches(self, rel: str, name: str) -> bool:
        if name.startswith("."):
            return False
        if "/" in self._pattern:
            return fnmatchcase(rel, self._pattern)
        return fnmatchcase(name, self._pattern)

    def _matching_paths(self) -> Iterator[tuple[str, bool]]:
        """Matching entries in a stable order; raises when a directory
        cannot be listed (a partial listing must not look like deletions)."""
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            directory = os.path.join(self.root, rel_dir) if rel_dir else self.root
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except FileNotFoundError:
                if not rel_dir:
                    raise DirectoryUnavailable(self.root, "does not exist") from None
                continue  # a subdirectory removed mid-scan: its files are gone
            except OSError as exc:
                raise DirectoryUnavailable(directory, f"cannot list: {exc.strerror or exc}") from None
            subdirs: list[str] = []
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if self._matches(rel, entry.name):
                    yield entry.path, _is_link(entry)  # from the listing: no extra lstat
                if not entry.name.startswith(".") and _is_real_dir(entry):
                    subdirs.append(rel)
            stack.extend(reversed(subdirs))

    # --- one file ----------------------------------------------------------

    def _isolated(
        self,
        path: str,
        is_link: bool,
        root_real: str,
        known: Mapping[str, FileStamp],
        validated: Container[str],
    ) -> Candidate | None:
        """``_candidate``, and a surprise in it is that one file's problem."""
        try:
            return self._candidate(path, is_link, root_real, known, validated)
        except Exception as exc:  # noqa: BLE001 - one file never fails the source
            log.exception("%s: unexpected error reading %s", self.name, path_text(path))
            return _invalid(
                path_text(path), f"internal error while reading it ({type(exc).__name__}); run with --debug"
            )

    def _candidate(
        self,
        path: str,
        is_link: bool,
        root_real: str,
        known: Mapping[str, FileStamp],
        validated: Container[str],
    ) -> Candidate | None:
        """Never raises: every problem becomes an invalid candidate."""
        if (shown := path_text(path)) != path:  # not UTF-8: the name cannot be stored
            return _invalid(shown, "the file name is not valid UTF-8 (rename the file)")
        if is_link:
            target = os.path.realpath(path)
            if os.path.commonpath([target, root_real]) != root_real:
                return _invalid(
                    path,
                    f"symlink points outside the source directory "
                    f"{self.root} (to {target}); keyd follows links "
                    f"only inside it",
                )
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if is_link:
                return _invalid(path, "broken symlink (its target does not exist)")
            return None  # removed between listing and stat: simply not there
        except OSError as exc:
            return _invalid(path, f"cannot stat: {exc.strerror or exc}")
        if stat.S_ISDIR(st.st_mode):
            return _invalid(path, "is a directory, not a key file")
        if not stat.S_ISREG(st.st_mode):
            return _invalid(path, "is not a regular file")
        stamp = FileStamp(st.st_size, st.st_mtime_ns, st.st_ino)
        warnings = self._exposure(path, st)
        seen = Candidate(
            ref=path, size=stamp.size, mtime_ns=stamp.mtime_ns, inode=stamp.inode, warnings=warnings
        )
        if known.get(path) == stamp:
            return replace(seen, unchanged=True)
        for warning in warnings:
            if not warning.directory:  # a directory's is logged once, in _exposure
                log.warning("%s", warning.message)
        try:
            keyfile = self._parse(path, validated)
        except KeyFileError as exc:
            return replace(seen, error=exc)
        return replace(seen, keyfile=keyfile)

    def _parse(self, path: str, validated: Container[str]) -> KeyFile:
        data = read_bounded(path)
        cheap = parse_keyfile(data, source=path, tz=self.tz, validate="none")
        level: Validation = "quick" if cheap.content_hash in validated else "full"
        return parse_keyfile(data, source=path, tz=self.tz, validate=level)

    def _exposure(self, path: str, st: os.stat_result) -> tuple[Exposure, ...]:
        """Warnings when the file or its directory is readable beyond
        keyd's own group (see ``exposure``); the directory's logged once per scan."""
        problems: list[Exposure] = []
        mine = exposure(st.st_mode, st.st_gid)
        if mine:
            problems.append(Exposure(path, mine))
        directory = os.path.dirname(path) or "."
        if directory not in self._dir_modes:
            try:
                dst = os.stat(directory)
                self._dir_modes[directory] = exposure(dst.st_mode, dst.st_gid)
            except OSError:
                self._dir_modes[directory] = None
            if self._dir_modes[directory]:
                log.warning("directory %s holding key files is %s", directory, self._dir_modes[directory])
        readers = self._dir_modes[directory]
        if readers:
            problems.append(Exposure(directory, readers, directory=True))
        return tuple(problems)


def exposure(mode: int, gid: int) -> str | None:
    """Who besides keyd can read this, or None. The layout keyd's own
    tmpfiles/sysusers snippets prescribe (files 0640 and directories 0750,
    group keyd) is fine: group-readable by keyd's own group. Readable by
    other users, or by a group that is not keyd's, is not."""
    perm = stat.S_IMODE(mode)
    if mode & stat.S_IROTH:
        return f"readable by other users (mode {perm:04o}, chmod o-r it)"
    if mode & stat.S_IRGRP and gid != os.getegid():
        return (
            f"readable by group {_group_name(gid)}, which is not keyd's own group "
            f"(mode {perm:04o}, chgrp it to keyd's group or chmod g-r it)"
        )
    return None


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"


def _is_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _invalid(path: str, problem: str) -> Candidate:
    return Candidate(ref=path, error=KeyFileError(path, problem))
