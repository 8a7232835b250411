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
  is not opened and costs one ``stat`` (from its ``scandir`` entry) and no
  object: its path goes to ``ScanResult.quiet``, or with its warnings to
  ``ScanResult.warned`` (a symlink's target, rarer, as an ``unchanged``
  candidate). Each path there is a key of ``known``, and comes once (the
  reconciler relies on it not to look 10^5 paths up again).
* Order: directories are walked depth first by name, and the candidates
  of each directory come by name, so a scan of the same tree lists them in
  the same order; unchanged paths come in listing order (nothing depends
  on it, and not sorting 10^5 of them is part of a warm scan's budget).
* Partial: ``scan_directories(dirs, known, validated)`` lists only the
  given directories (the daemon's watcher saw changes there, see
  ``keyd.sources.watch``); the result covers those directories only.

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

import fnmatch
import grp
import logging
import operator
import os
import re
import stat
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, tzinfo
from typing import NamedTuple

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


class DirectoryVanished(DirectoryUnavailable):
    """A directory a partial scan was asked to list is gone: the tree
    changed shape, so the caller scans the whole source instead."""


class FileStamp(NamedTuple):
    """What decides "unchanged" without reading the file (equal to the
    plain ``(size, mtime_ns, inode)`` tuple the inventory hands over)."""

    size: int
    mtime_ns: int
    inode: int


_BY_NAME = operator.attrgetter("name")
_OTHERS, _GROUP, S_ISREG = stat.S_IROTH, stat.S_IRGRP, stat.S_ISREG


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
        self._match = re.compile(fnmatch.translate(self._pattern)).match
        tail = self._pattern[1:]  # the usual "*.json": a plain suffix test
        self._suffix = tail if self._pattern.startswith("*") and not any(c in tail for c in "*?[]/") else ""
        self._dir_modes: dict[str, str | None] = {}  # directory -> its exposure
        self._egid = os.getegid()

    @property
    def name(self) -> str:
        return self.cfg.name

    def relevant(self, directory: str, name: str) -> bool:
        """Whether a file called ``name`` in ``directory`` is one a scan
        looks at (the pattern; dot-names never are)."""
        if name.startswith("."):
            return False
        if self._suffix:
            return name.endswith(self._suffix)
        if "/" in self._pattern and directory != self.root:
            rel_dir = os.path.relpath(directory, self.root)
            return bool(self._match(f"{rel_dir}/{name}"))
        return bool(self._match(name))

    def scan(
        self,
        known: Mapping[str, Sequence[object]] | None = None,
        validated: Container[str] = frozenset(),
        *,
        on_directory: Callable[[str], object] | None = None,
    ) -> ScanResult:
        """One pass over the tree (raises ``DirectoryUnavailable``). A file
        whose stamp equals ``known[path]`` costs one ``stat`` and lands in
        ``ScanResult.unchanged``; every other file becomes a ``Candidate``.

        ``on_directory(path)`` is called for each directory the walk
        descends, just *before* it is listed (the daemon's watcher adds its
        watch there, so that nothing changing during the walk is missed);
        it must not raise."""
        known = known or {}
        self._dir_modes = {}
        self._egid = os.getegid()
        self._check_root()
        result = ScanResult(source=self.name)
        closer = self._walk(known, result, on_directory)
        return self._finish(result, closer, known, validated)

    def scan_directories(
        self,
        directories: Collection[str],
        known: Mapping[str, Sequence[object]] | None = None,
        validated: Container[str] = frozenset(),
    ) -> ScanResult:
        """A partial scan: only the files directly in ``directories`` (full
        paths under the root, as the walk names them; not recursive).
        ``known`` needs only these directories' locations. Raises
        ``DirectoryUnavailable`` when one of them cannot be listed, and
        ``DirectoryVanished`` when one no longer exists (the tree changed
        shape: only a full scan can say what is gone)."""
        known = known or {}
        self._dir_modes = {}
        self._egid = os.getegid()
        self._check_root()
        result = ScanResult(source=self.name)
        closer: list[tuple[os.DirEntry[str], str]] = []
        prefix = self.root + os.sep
        for directory in sorted(set(directories)):  # each listed once: no path twice
            if directory == self.root:
                rel_dir = ""
            elif directory.startswith(prefix):
                rel_dir = directory[len(prefix) :]
            else:
                raise ValueError(f"{directory} is not under {self.root}")
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except FileNotFoundError:
                raise DirectoryVanished(directory, "no longer exists") from None
            except NotADirectoryError:
                raise DirectoryVanished(directory, "is no longer a directory") from None
            except OSError as exc:
                raise DirectoryUnavailable(directory, f"cannot list: {exc.strerror or exc}") from None
            self._directory(directory, rel_dir, entries, known, result, closer)
        return self._finish(result, closer, known, validated)

    def _finish(
        self,
        result: ScanResult,
        closer: list[tuple[os.DirEntry[str], str]],
        known: Mapping[str, Sequence[object]],
        validated: Container[str],
    ) -> ScanResult:
        """Look closer at the new, changed and odd files the listing left."""
        root_real = os.path.realpath(self.root)
        result = replace(result, symlinks=sum(1 for entry, _directory in closer if _is_link(entry)))
        task = f"reading {self.name}"
        progress.begin(task, len(closer), "files")
        for entry, directory in closer:
            if (cand := self._isolated(entry, directory, root_real, known, validated)) is not None:
                result.candidates.append(cand)
            progress.advance(task)
        progress.end(task)
        self._log_exposed(result)
        return result

    # --- walking ---------------------------------------------------------

    def _walk(
        self,
        known: Mapping[str, Sequence[object]],
        result: ScanResult,
        on_directory: Callable[[str], object] | None = None,
    ) -> list[tuple[os.DirEntry[str], str]]:
        """One ``scandir`` per directory, in a stable order; unchanged files
        go to ``result``, the others are returned ``(entry, directory)``
        for a closer look. Raises when a directory cannot be listed (a
        partial listing must not look like deletions)."""
        closer: list[tuple[os.DirEntry[str], str]] = []
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            directory = os.path.join(self.root, rel_dir) if rel_dir else self.root
            if on_directory is not None:
                on_directory(directory)
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except FileNotFoundError:
                if not rel_dir:
                    raise DirectoryUnavailable(self.root, "does not exist") from None
                continue  # a subdirectory removed mid-scan: its files are gone
            except OSError as exc:
                raise DirectoryUnavailable(directory, f"cannot list: {exc.strerror or exc}") from None
            subdirs = self._directory(directory, rel_dir, entries, known, result, closer)
            stack.extend(reversed(subdirs))
        return closer

    def _directory(
        self,
        directory: str,
        rel_dir: str,
        entries: list[os.DirEntry[str]],
        known: Mapping[str, Sequence[object]],
        result: ScanResult,
        closer: list[tuple[os.DirEntry[str], str]],
    ) -> list[str]:
        """The loop a warm scan spends its time in. Names starting with
        ``.`` are skipped; a matching regular file whose stamp is ``known``
        costs a lookup, the one ``stat`` of its entry (whether it is a link
        comes with the listing: no extra ``lstat``), a comparison and an
        append of its path; any other match (new, changed, a symlink, a
        problem) is looked at closer (``_isolated`` reuses that ``stat``),
        in name order. Returns the subdirectories to descend, relative to
        the root, in name order."""
        subdirs: list[str] = []
        mine: list[os.DirEntry[str]] = []
        quiet_add, get = result.quiet.append, known.get
        match, suffix, by_rel, egid = self._match, self._suffix, "/" in self._pattern, self._egid
        quiet = self._quiet(directory)
        for entry in entries:
            name = entry.name
            if name[0] == ".":  # a listed name is never empty
                continue
            if (
                name.endswith(suffix)
                if suffix
                else match(f"{rel_dir}/{name}" if by_rel and rel_dir else name)
            ):
                path = entry.path
                stamp = get(path)
                if stamp is not None:
                    try:
                        st = entry.stat(follow_symlinks=False)  # a symlink's is not S_ISREG
                    except OSError:
                        pass  # _isolated says what is wrong with it
                    else:
                        mode = st.st_mode
                        if (
                            stamp[0] == st.st_size
                            and stamp[1] == st.st_mtime_ns
                            and stamp[2] == st.st_ino
                            and S_ISREG(mode)
                        ):
                            if quiet and not (mode & _OTHERS or (mode & _GROUP and st.st_gid != egid)):
                                quiet_add(path)
                            else:
                                if warnings := self._exposure(path, st, directory):
                                    result.warned.append((path, warnings))
                                else:
                                    quiet_add(path)
                                quiet = self._quiet(directory)
                            continue  # a regular file: nothing to descend
                mine.append(entry)
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(name)
            except OSError:
                pass  # not a directory keyd can descend
        if mine:
            mine.sort(key=_BY_NAME)
            closer.extend((entry, directory) for entry in mine)
        subdirs.sort()
        return [f"{rel_dir}/{name}" for name in subdirs] if rel_dir else subdirs

    def _quiet(self, directory: str) -> bool:
        """Whether ``directory`` is known to be readable by keyd's group only
        (False also when not stat'ed yet: ``_exposure`` does it once)."""
        return directory in self._dir_modes and not self._dir_modes[directory]

    def _log_exposed(self, result: ScanResult) -> None:
        exposed = sum(1 for c in result.candidates if c.warnings) + len(result.warned)
        if exposed:
            log.warning(
                "%s: %d key file(s) readable beyond keyd's group (see keyd status)", self.name, exposed
            )

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

    # --- one file ----------------------------------------------------------

    def _isolated(
        self,
        entry: os.DirEntry[str],
        directory: str,
        root_real: str,
        known: Mapping[str, Sequence[object]],
        validated: Container[str],
    ) -> Candidate | None:
        """``_candidate``, and a surprise in it is that one file's problem."""
        try:
            return self._candidate(entry, directory, root_real, known, validated)
        except Exception as exc:  # noqa: BLE001 - one file never fails the source
            log.exception("%s: unexpected error reading %s", self.name, path_text(entry.path))
            return _invalid(
                path_text(entry.path),
                f"internal error while reading it ({type(exc).__name__}); run with --debug",
            )

    def _candidate(
        self,
        entry: os.DirEntry[str],
        directory: str,
        root_real: str,
        known: Mapping[str, Sequence[object]],
        validated: Container[str],
    ) -> Candidate | None:
        """Never raises: every problem becomes an invalid candidate."""
        path, is_link = entry.path, _is_link(entry)
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
            st = os.stat(path) if is_link else entry.stat(follow_symlinks=False)
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
        warnings = self._exposure(path, st, directory)
        seen = Candidate(
            ref=path, size=stamp.size, mtime_ns=stamp.mtime_ns, inode=stamp.inode, warnings=warnings
        )
        if _same(known.get(path), st):  # a symlink's target, unchanged
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

    def _exposure(self, path: str, st: os.stat_result, directory: str) -> tuple[Exposure, ...]:
        """Warnings when the file or its directory is readable beyond
        keyd's own group (see ``exposure``); the directory's logged once per scan."""
        if directory not in self._dir_modes:
            self._dir_modes[directory] = self._directory_exposure(directory)
        readers = self._dir_modes[directory]
        mode = st.st_mode
        if not readers and not (mode & stat.S_IROTH or (mode & stat.S_IRGRP and st.st_gid != self._egid)):
            return ()  # the common case, decided without building any text
        mine = exposure(mode, st.st_gid)
        problems = [Exposure(path, mine)] if mine else []
        if readers:
            problems.append(Exposure(directory, readers, directory=True))
        return tuple(problems)

    def _directory_exposure(self, directory: str) -> str | None:
        try:
            dst = os.stat(directory)
        except OSError:
            return None
        readers = exposure(dst.st_mode, dst.st_gid)
        if readers:
            log.warning("directory %s holding key files is %s", directory, readers)
        return readers


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


def _same(stamp: Sequence[object] | None, st: os.stat_result) -> bool:
    """``stamp`` starts with this file's ``(size, mtime_ns, inode)``."""
    return (
        stamp is not None and stamp[0] == st.st_size and stamp[1] == st.st_mtime_ns and stamp[2] == st.st_ino
    )


def _is_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _invalid(path: str, problem: str) -> Candidate:
    return Candidate(ref=path, error=KeyFileError(path, problem))
