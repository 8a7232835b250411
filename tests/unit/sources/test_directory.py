"""DirectorySource on real temporary directories."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from keyd.config import DirectorySourceConfig
from keyd.exposure import Exposure
from keyd.sources import keyfile as keyfile_mod
from keyd.sources.base import Candidate
from keyd.sources.directory import DirectorySource, DirectoryUnavailable, FileStamp
from tests.support.keys import make_key_file

PEM_MARKER = "PRIVATE KEY-----"


def write_keyfile(path: Path, key_id: str, *, mode: int = 0o600, alg: str = "RS256") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = make_key_file(path.parent, key_id=key_id, filename=path.name, alg=alg)
    assert made.path is not None
    os.chmod(made.path, mode)
    return made.path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "keys"
    r.mkdir(mode=0o700)
    os.chmod(r, 0o700)
    return r


def source(root: Path, pattern: str = "*.json") -> DirectorySource:
    return DirectorySource(DirectorySourceConfig(name=f"directory:{root}", path=root, pattern=pattern))


def by_ref(cands: list[Candidate]) -> dict[str, Candidate]:
    return {c.ref: c for c in cands}


def test_recursive_pattern_on_names_at_any_depth(root: Path) -> None:
    write_keyfile(root / "a.json", "k1")
    write_keyfile(root / "team" / "deep" / "b.json", "k2")
    write_keyfile(root / "team" / "notes.txt", "k3")
    write_keyfile(root / ".hidden" / "c.json", "k4")  # dot dirs skipped (k8s ..data)
    result = source(root).scan()
    assert result.source == f"directory:{root}"
    refs = [c.ref for c in result.candidates]
    assert refs == [str(root / "a.json"), str(root / "team" / "deep" / "b.json")]
    assert [c.keyfile.key_id for c in result.candidates if c.keyfile] == ["k1", "k2"]
    c = result.candidates[0]
    assert c.error is None and not c.unchanged and c.warnings == ()
    st = os.stat(root / "a.json")
    assert (c.size, c.mtime_ns, c.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_double_star_prefix_and_path_pattern(root: Path) -> None:
    write_keyfile(root / "x" / "a.json", "k1")
    write_keyfile(root / "y" / "b.json", "k2")
    assert len(source(root, "**/*.json").scan().candidates) == 2
    assert [c.ref for c in source(root, "x/*.json").scan().candidates] == [str(root / "x/a.json")]


def test_readable_by_others_warns_but_is_used(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_keyfile(root / "a.json", "k1", mode=0o644)
    write_keyfile(root / "b.json", "k2")
    caplog.set_level(logging.WARNING)
    cands = by_ref(source(root).scan().candidates)
    a, b = cands[str(root / "a.json")], cands[str(root / "b.json")]
    assert a.keyfile is not None
    assert a.warnings == (
        Exposure(str(root / "a.json"), "readable by other users (mode 0644, chmod o-r it)"),
    )
    assert a.warnings[0].message == (
        f"key file {root / 'a.json'} is readable by other users (mode 0644, chmod o-r it)"
    )
    assert b.warnings == ()
    assert "readable by other users" in caplog.text
    os.chmod(root, 0o755)
    b2 = by_ref(source(root).scan().candidates)[str(root / "b.json")]
    assert b2.keyfile is not None
    assert b2.warnings == (
        Exposure(str(root), "readable by other users (mode 0755, chmod o-r it)", directory=True),
    )
    assert (
        b2.warnings[0].message == f"its directory {root} is readable by other users (mode 0755, chmod o-r it)"
    )
    assert PEM_MARKER not in caplog.text


def test_the_layout_keyds_snippets_prescribe_is_fine(root: Path) -> None:
    """tmpfiles: directories 0750 root:keyd; sysusers: files 0640, group keyd."""
    os.chmod(root, 0o750)
    os.chown(root, -1, os.getegid())
    write_keyfile(root / "a.json", "k1", mode=0o640)
    os.chown(root / "a.json", -1, os.getegid())
    (cand,) = source(root).scan().candidates
    assert cand.keyfile is not None and cand.warnings == ()


def test_readable_by_another_group_warns(root: Path) -> None:
    other = os.getegid() + 4242  # a gid nobody uses: not keyd's own group
    write_keyfile(root / "a.json", "k1", mode=0o640)
    os.chown(root / "a.json", -1, other)
    (cand,) = source(root).scan().candidates
    assert [w.message for w in cand.warnings] == [
        f"key file {root / 'a.json'} is readable by group gid {other}, "
        "which is not keyd's own group (mode 0640, chgrp it to keyd's group "
        "or chmod g-r it)"
    ]


def test_symlink_inside_root_followed_outside_refused(root: Path, tmp_path: Path) -> None:
    target = write_keyfile(root / "store" / "real.key", "k1")
    os.symlink(target, root / "inside.json")
    outside = write_keyfile(tmp_path / "elsewhere" / "secret.json", "k2")
    os.symlink(outside, root / "outside.json")
    os.symlink(root / "nope", root / "broken.json")
    cands = by_ref(source(root).scan().candidates)
    inside = cands[str(root / "inside.json")]
    assert inside.keyfile is not None and inside.keyfile.key_id == "k1"
    out = cands[str(root / "outside.json")]
    assert out.keyfile is None and out.error is not None
    assert "outside the source directory" in out.error.problem
    assert str(outside) in str(out.error)
    broken = cands[str(root / "broken.json")]
    assert broken.error is not None and "broken symlink" in broken.error.problem


def test_symlinked_directory_not_descended(root: Path, tmp_path: Path) -> None:
    write_keyfile(tmp_path / "other" / "a.json", "k1")
    os.symlink(tmp_path / "other", root / "linked")
    assert source(root).scan().candidates == []


def test_unchanged_file_is_not_read(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_keyfile(root / "a.json", "k1")
    first = source(root).scan().candidates[0]
    assert first.size is not None and first.mtime_ns is not None and first.inode is not None
    known = {first.ref: FileStamp(first.size, first.mtime_ns, first.inode)}

    def boom(*a: object, **k: object) -> bytes:
        raise AssertionError("unchanged file was read")

    monkeypatch.setattr("keyd.sources.directory.read_bounded", boom)
    again = source(root).scan(known)
    assert again.candidates == [] and again.unchanged == [(str(path), ())]
    monkeypatch.undo()
    os.utime(path, ns=(first.mtime_ns + 1_000_000, first.mtime_ns + 1_000_000))
    (changed,) = source(root).scan(known).candidates
    assert not changed.unchanged and changed.keyfile is not None


def test_an_unchanged_file_keeps_its_warnings(root: Path) -> None:
    """The fast path still looks at the mode: a chmod changes no stamp."""
    path = write_keyfile(root / "a.json", "k1", mode=0o644)
    st = os.stat(path)
    known = {str(path): (st.st_size, st.st_mtime_ns, st.st_ino, "and whatever the inventory keeps")}
    (unchanged,) = source(root).scan(known).unchanged
    assert unchanged == (
        str(path),
        (Exposure(str(path), "readable by other users (mode 0644, chmod o-r it)"),),
    )
    os.chmod(path, 0o600)
    os.chmod(root, 0o755)
    (unchanged,) = source(root).scan(known).unchanged
    assert unchanged == (
        str(path),
        (Exposure(str(root), "readable by other users (mode 0755, chmod o-r it)", directory=True),),
    )


class _CountingEntry:
    """An ``os.DirEntry`` whose ``stat`` calls are counted (DirEntry itself
    cannot be patched)."""

    def __init__(self, entry: os.DirEntry[str], stats: list[str]) -> None:
        self._entry, self._stats = entry, stats
        self.name, self.path = entry.name, entry.path

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        self._stats.append(self.path)
        return self._entry.stat(follow_symlinks=follow_symlinks)

    def __getattr__(self, name: str) -> object:
        return getattr(self._entry, name)


def test_a_warm_scan_stats_each_file_once(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``stat`` per file and one per directory (its permissions), no
    ``lstat`` or ``islink`` on top: the listing already says what is a link."""
    for i in range(6):
        write_keyfile(root / f"team{i % 2}" / f"{i}.json", f"k{i}", alg="ES256")
    target = write_keyfile(root / ".store" / "t.json", "k-link", alg="ES256")  # dot dir: not walked
    os.symlink(target, root / "link.json")
    cold = source(root).scan()
    known = {c.ref: (c.size, c.mtime_ns, c.inode) for c in cold.candidates}
    stats: list[str] = []
    real_scandir, real_stat, real_lstat = os.scandir, os.stat, os.lstat

    class Listing:
        def __init__(self, path: str) -> None:
            self._it = real_scandir(path)

        def __enter__(self) -> list[_CountingEntry]:
            return [_CountingEntry(e, stats) for e in self._it]

        def __exit__(self, *exc: object) -> None:
            self._it.close()

    def counted(real: object) -> object:
        def call(path: object, *a: object, **k: object) -> object:
            stats.append(str(path))
            return real(path, *a, **k)  # type: ignore[operator]

        return call

    monkeypatch.setattr(os, "scandir", Listing)
    monkeypatch.setattr(os, "stat", counted(real_stat))
    monkeypatch.setattr(os, "lstat", counted(real_lstat))
    warm = source(root).scan(known)
    monkeypatch.undo()
    assert len(warm.unchanged) == 6
    (link,) = warm.candidates  # a symlink: its target's stamp, looked at closer
    assert link.unchanged and link.ref == str(root / "link.json")
    regular = [p for p in stats if p.endswith(".json") and "link" not in p and ".store" not in p]
    assert sorted(regular) == sorted(str(root / f"team{i % 2}" / f"{i}.json") for i in range(6))
    assert [p for p in stats if p.endswith("team0")] == [str(root / "team0")]  # once per directory


def test_junk_big_dir_and_unreadable_are_invalid_candidates(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "junk.json").write_text("{not json")
    (root / "list.json").write_text("[1, 2]")
    (root / "empty.json").write_text("")
    with open(root / "big.json", "wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # sparse 50 MB file: refused before reading
    os.mkfifo(root / "fifo.json")  # must not block the scan
    (root / "dir.json").mkdir()
    write_keyfile(root / "dir.json" / "inner.json", "k-inner")
    write_keyfile(root / "locked.json", "k-locked")
    real_open = os.open

    def deny(path: str, *a: int, **k: int) -> int:
        if str(path).endswith("locked.json"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(keyfile_mod.os, "open", deny)
    cands = by_ref(source(root).scan().candidates)
    problems = {Path(ref).name: c.error.problem for ref, c in cands.items() if c.error}
    assert "not valid JSON" in problems["junk.json"]
    assert "expected a JSON object" in problems["list.json"]
    assert "empty" in problems["empty.json"]
    assert "bytes" in problems["big.json"]
    assert "is a directory" in problems["dir.json"]
    assert "not a regular file" in problems["fifo.json"]
    assert "permission denied" in problems["locked.json"]
    inner = cands[str(root / "dir.json" / "inner.json")]
    assert inner.keyfile is not None  # a directory named *.json is still descended


def test_source_failures_raise(tmp_path: Path) -> None:
    with pytest.raises(DirectoryUnavailable, match="does not exist"):
        source(tmp_path / "gone").scan()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DirectoryUnavailable, match="not a directory") as info:
        source(f).scan()
    assert info.value.retryable


def test_unlistable_subdirectory_fails_the_source(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_keyfile(root / "sub" / "a.json", "k1")
    real = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("sub"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr("keyd.sources.directory.os.scandir", scandir)
    with pytest.raises(DirectoryUnavailable, match="cannot list"):
        source(root).scan()


def test_full_validation_only_for_unknown_content(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_keyfile(root / "a.json", "k1", alg="ES256")
    seen: list[str] = []
    real = keyfile_mod.parse_keyfile

    def spy(*a: object, **k: object) -> object:
        seen.append(str(k["validate"]))
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr("keyd.sources.directory.parse_keyfile", spy)
    kf = source(root).scan().candidates[0].keyfile
    assert kf is not None and seen == ["none", "full"]
    seen.clear()
    source(root).scan(validated={kf.content_hash})
    assert seen == ["none", "quick"]


def test_a_bug_while_reading_one_file_makes_only_it_invalid(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_keyfile(root / "a.json", "k1")
    write_keyfile(root / "b.json", "k2")
    src = source(root)
    real = src._parse

    def parse(path: str, validated: object) -> object:
        if path.endswith("b.json"):
            raise MemoryError("bug")
        return real(path, validated)  # type: ignore[arg-type]

    monkeypatch.setattr(src, "_parse", parse)
    cands = by_ref(src.scan().candidates)
    assert cands[str(root / "a.json")].keyfile is not None
    error = cands[str(root / "b.json")].error
    assert error is not None and error.problem == (
        "internal error while reading it (MemoryError); run with --debug"
    )


def test_a_partial_scan_lists_a_directory_named_twice_once(root: Path) -> None:
    """Each unchanged path comes once (the reconciler counts on it: as many
    quiet refs as held rows means every held row), even when the caller
    names a directory twice."""
    for i in range(3):
        write_keyfile(root / "team" / f"{i}.json", f"k{i}", alg="ES256")
    cold = source(root).scan()
    known = {c.ref: (c.size, c.mtime_ns, c.inode) for c in cold.candidates}
    team = str(root / "team")
    warm = source(root).scan_directories([team, team], known)
    assert sorted(warm.quiet) == sorted(known) and len(warm.quiet) == 3
