"""`make deb` end to end: build the package (lintian must pass), install it
into a throw-away Debian root made by debootstrap (tests/support/debroot.py,
cached between runs), and use it there the way an operator would.

The root has no running systemd. To see what the maintainer scripts ask of
systemd, the root gets ``/run/systemd/system`` (the marker the scripts test)
and ``systemctl`` / ``deb-systemd-invoke`` in /usr/local/sbin that only
record their arguments: installing must ask for a daemon-reload and nothing
that enables or starts a unit.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.debroot import DebianRoot, debian_root, dependency_names
from tests.support.keys import make_key_file

ROOT = Path(__file__).resolve().parents[3]
UNITS = ("keyd.service", "keyd-check.service", "keyd-check.timer")
RECORDER = '#!/bin/sh\necho "$(basename "$0") $*" >> /var/log/systemd-calls\n'
AS_KEYD = "runuser -u keyd -- "

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        ["make", "deb", f"DIST={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "DEB_MAINTAINER": "keyd tests <keyd-tests@example.org>"},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (package,) = out.glob("keyd_*.deb")
    return package


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    with debian_root(tmp_path_factory.mktemp("debroot"), dependency_names(deb)) as chroot:
        chroot.file("/run/systemd/system").mkdir(parents=True)
        for tool in ("systemctl", "deb-systemd-invoke"):
            recorder = chroot.file(f"/usr/local/sbin/{tool}")
            recorder.write_text(RECORDER)
            recorder.chmod(0o755)
        (chroot.file("/tmp") / deb.name).write_bytes(deb.read_bytes())
        installed = chroot.run(f"dpkg -i /tmp/{deb.name}")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        yield chroot


def ok(root: DebianRoot, script: str) -> str:
    result = root.run(script)
    assert result.returncode == 0, f"{script}: {result.stdout}{result.stderr}"
    return result.stdout


def test_install_reloads_systemd_but_enables_and_starts_nothing(root: DebianRoot) -> None:
    calls = root.file("/var/log/systemd-calls").read_text().splitlines()
    assert calls == ["systemctl --system daemon-reload"]
    assert not list(root.file("/etc/systemd/system").glob("*.wants/keyd*"))


def test_layout(root: DebianRoot) -> None:
    for path in (
        "/usr/lib/systemd/system/keyd.service",
        "/usr/lib/sysusers.d/keyd.conf",
        "/usr/lib/tmpfiles.d/keyd.conf",
        "/usr/share/man/man1/keyd.1.gz",
        "/usr/share/man/man1/keyd-run.1.gz",
        "/usr/share/bash-completion/completions/keyd",
        "/usr/share/zsh/vendor-completions/_keyd",
        "/usr/share/fish/vendor_completions.d/keyd.fish",
        "/usr/share/doc/keyd/README.md.gz",
        "/usr/share/doc/keyd/copyright",
        "/usr/share/doc/keyd/examples/prometheus-rules.yml",
    ):
        assert root.file(path).is_file(), path
    assert ok(root, "dpkg-query -W -f='${Conffiles}' keyd").split()[0] == "/etc/keyd/keyd.toml"
    assert ok(root, "stat -c '%U:%G %a' /etc/keyd /etc/keyd/keys /var/lib/keyd").split() == [
        "root:keyd",
        "750",
        "root:keyd",
        "750",
        "keyd:keyd",
        "700",
    ]
    # The completion answers from the installed keyd itself.
    words = ok(root, "COMP_WORDS='keyd d' COMP_CWORD=1 _KEYD_COMPLETE=bash_complete keyd")
    assert "plain,db" in words


def test_version(root: DebianRoot, deb: Path) -> None:
    version = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert ok(root, "keyd --version").strip() == f"keyd, version {version}"


def test_db_upgrade_on_the_packaged_default_path(root: DebianRoot) -> None:
    assert "sqlite:////var/lib/keyd/keyd.db: at" in ok(root, AS_KEYD + "keyd db upgrade")
    assert "(head)" in ok(root, AS_KEYD + "keyd db current")
    assert ok(root, "stat -c %U /var/lib/keyd/keyd.db").strip() == "keyd"


def test_config_check_on_the_shipped_config(root: DebianRoot) -> None:
    ok(root, AS_KEYD + "keyd db upgrade")
    out = ok(root, AS_KEYD + "keyd config check")
    # Defaults apply (SQLite, nothing remote configured); the one active
    # setting is the key directory the tmpfiles snippet created.
    assert out.splitlines() == [
        "config /etc/keyd/keyd.toml: valid",
        "ok   database sqlite:////var/lib/keyd/keyd.db: reachable, schema at head",
        "ok   source local-keys: /etc/keyd/keys readable",
    ]


def test_a_key_file_on_the_prescribed_layout_scans_without_warnings(root: DebianRoot, tmp_path: Path) -> None:
    """/etc/keyd/keys as tmpfiles makes it (0750 root:keyd), a key file in
    it 0640 root:keyd, as sysusers.conf advises: keyd reads it, no warning."""
    key = make_key_file(tmp_path, expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert key.path is not None
    (root.file("/etc/keyd/keys") / "ci.json").write_bytes(key.path.read_bytes())
    ok(root, "chown root:keyd /etc/keyd/keys/ci.json && chmod 0640 /etc/keyd/keys/ci.json")
    ok(root, AS_KEYD + "keyd db upgrade")
    result = root.run(AS_KEYD + "keyd scan")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("1 source, 1 key (")
    status = ok(root, AS_KEYD + "keyd status")
    assert key.key_id in status and "Problems" not in status


def test_installed_units_verify_with_the_real_exec_start(root: DebianRoot) -> None:
    units = " ".join(f"/usr/lib/systemd/system/{u}" for u in UNITS)
    result = root.run(f"cd / && systemd-analyze verify --man=no {units}")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert (
        "ExecStart=/usr/bin/keyd --config /etc/keyd/keyd.toml run"
        in root.file("/usr/lib/systemd/system/keyd.service").read_text()
    )


def test_purge_removes_the_package_and_keeps_the_database(root: DebianRoot, deb: Path) -> None:
    ok(root, AS_KEYD + "keyd db upgrade")
    mine = root.file("/etc/keyd/keys/mine.json")  # the administrator's, not the package's
    mine.write_text("{}")
    result = root.run("dpkg --purge keyd")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept /var/lib/keyd" in result.stderr
    for gone in (
        "/usr/lib/keyd",
        "/usr/bin/keyd",
        "/etc/keyd/keyd.toml",
        "/run/keyd",
        "/usr/lib/systemd/system/keyd.service",
        "/usr/share/doc/keyd",
    ):
        assert not root.file(gone).exists(), gone
    assert root.file("/var/lib/keyd/keyd.db").is_file() and mine.is_file()
    # Asked for, the database goes too; with nothing of anyone else's in
    # /etc/keyd, the directory goes.
    ok(root, "rm -f /etc/keyd/keys/*.json")
    ok(root, f"dpkg -i /tmp/{deb.name}")
    result = root.run("dpkg --purge keyd", env={"KEYD_PURGE_DATABASE": "yes"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert not root.file("/var/lib/keyd").exists() and not root.file("/etc/keyd").exists()
    assert ok(root, "dpkg-query -W -f='${db:Status-Abbrev}' keyd || true").strip() in ("", "un")
