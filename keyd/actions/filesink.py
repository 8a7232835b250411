"""Atomic token files for hosts that read a file instead of Vault
(README "Validation probe and token write-back": mode 0600, temp file, fsync, rename; never
truncated to empty).

A reader sees either the old complete file or the new complete file: the
content goes to a temp file in the same directory (created 0600, so the
token is never briefly world-readable), is fsynced, renamed over the
target, and the directory is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from keyd.errors import KeydError

FILE_MODE = 0o600
DIR_MODE = 0o700


class TokenFileError(KeydError):
    """The token file could not be written (the Vault copy is unaffected)."""

    retryable = True

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}")


def safe_join(base: Path, relative: str) -> Path:
    """``base/relative`` refusing absolute parts and ``..`` (the relative
    part comes from a validated Vault path, but check again at the edge)."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") or "\x00" in p for p in parts):
        raise TokenFileError(base / relative, "is not a safe file name below the token directory")
    return base.joinpath(*parts)


def write_atomic(
    path: Path, content: bytes, *, mode: int = FILE_MODE, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``content`` atomically, ``mode`` (0600) and,
    when given, ``owner`` (uid, gid; a rotated key file keeps its owner).

    Raises ``TokenFileError``; on any failure the old file is untouched.
    Empty content is refused: a reader must never find an empty file.
    """
    if not content:
        raise TokenFileError(path, "refusing to write an empty token file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except OSError as exc:
        raise TokenFileError(path, f"cannot create its directory: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        try:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(fd, *owner)  # before the mode: chown may clear set-id bits
            os.fchmod(fd, mode)  # O_CREAT honours umask; an old tmp may have other bits
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TokenFileError(path, f"cannot write: {exc.strerror or exc}") from None
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
