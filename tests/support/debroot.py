"""A throw-away Debian root for installing keyd's package into.

``debootstrap --variant=minbase`` of the host's own release (the package is
built for it), with the package's dependencies included, made once and
cached as a tarball under the repository's gitignored ``.cache/debroot/``
(keyed by release and dependency list), then unpacked fresh for each test
module. Commands run in it with ``chroot`` and a clean environment; /proc
is mounted while it is in use. Needs root, which installing a package needs
anyway.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "debroot"
MIRROR = os.environ.get("KEYD_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}


def host_release() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise RuntimeError("/etc/os-release names no VERSION_CODENAME: not a Debian host?")


def dependency_names(deb: Path) -> list[str]:
    """Package names in the .deb's Depends (first alternative, no versions)."""
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    names = {re.split(r"[\s(:]", part.split("|")[0].strip())[0] for part in depends.split(",")}
    return sorted(n for n in names if n)


def cached_tarball(release: str, include: list[str]) -> Path:
    key = hashlib.sha256(f"{release} {MIRROR} {' '.join(include)}".encode()).hexdigest()[:12]
    tarball = CACHE / f"{release}-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=CACHE))
    build.chmod(0o755)  # it becomes the root directory: mkdtemp's 0700 would lock out users
    try:
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(include)}",
                release,
                str(build),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        partial = build.with_suffix(".partial")
        subprocess.run(
            ["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], check=True, timeout=600
        )
        partial.rename(tarball)
    finally:
        # An interrupted debootstrap leaves /proc and /sys mounted in the target.
        unmount_under(build)
        shutil.rmtree(build)
    return tarball


def unmount_under(path: Path) -> None:
    """Unmount everything mounted at or below ``path``, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m == str(path) or m.startswith(f"{path}/")]
    for mount in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)


class DebianRoot:
    def __init__(self, path: Path) -> None:
        self.path = path

    def run(
        self, script: str, *, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` inside the root, as root, in a clean environment."""
        return subprocess.run(
            ["chroot", str(self.path), "/bin/sh", "-c", script],
            env={**CLEAN_ENV, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")


@contextmanager
def debian_root(where: Path, include: list[str]) -> Iterator[DebianRoot]:
    tarball = cached_tarball(host_release(), include)
    root = where / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)], check=True, timeout=600)
    root.chmod(0o755)  # "/" as a Debian system has it (a tarball's "." may say otherwise)
    proc = root / "proc"
    if proc.is_symlink():  # debootstrap's container mode links it to the host's /proc
        proc.unlink()
        proc.mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield DebianRoot(root)
    finally:
        unmount_under(root)
