"""The shipped systemd units: ``systemd-analyze verify`` without a single
warning, hardening exposure <= 2.0, and sysusers/tmpfiles snippets that
apply cleanly to an empty root.

``verify`` insists that ExecStart's binary exists, so the units are copied
with ``/usr/bin/keyd`` pointed at this checkout's ``keyd`` (nothing else
changes). systemd-analyze is a test prerequisite: when it is missing the
test fails and says what to install; it never installs anything itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[3] / "systemd"
SERVICES = ("keyd.service", "keyd-check.service")
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: install the 'systemd' package "
            "(apt-get install -y systemd); these tests need it"
        )
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_units_verify_without_warnings(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    keyd = Path(sys.executable).with_name("keyd")
    assert keyd.is_file(), f"{keyd} missing: run `make venv`"
    copies = []
    for name in (*SERVICES, "keyd-check.timer"):
        text = (UNITS / name).read_text()
        copy = tmp_path / name
        copy.write_text(text.replace("/usr/bin/keyd", str(keyd)))
        copies.append(str(copy))
    result = run(analyze, "verify", "--man=no", *copies, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("name", SERVICES)
def test_hardening_exposure(name: str) -> None:
    analyze = tool("systemd-analyze")
    # --threshold counts tenths: 20 = exposure 2.0
    result = run(
        analyze, "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(UNITS / name)
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run(sysusers, f"--root={root}", str(UNITS / "keyd.sysusers.conf"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^keyd:x:\d+:\d+:.*:/var/lib/keyd:", (root / "etc/passwd").read_text(), re.M)
    if os.geteuid() != 0:
        pytest.fail("applying keyd.tmpfiles.conf needs root (it chowns to keyd)")
    result = run(tmpfiles, f"--root={root}", "--create", str(UNITS / "keyd.tmpfiles.conf"))
    assert result.returncode == 0, result.stderr
    assert oct((root / "var/lib/keyd").stat().st_mode & 0o777) == "0o700"
    assert oct((root / "etc/keyd/keys").stat().st_mode & 0o777) == "0o750"


def test_service_contract() -> None:
    """What keyd run relies on (daemon.py): notify, watchdog, HUP reload, a
    stop timeout above keyd's 20 s drain, no restart loop on exit 4."""
    text = (UNITS / "keyd.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=4",
        "WatchdogSec=60s",
        "TimeoutStopSec=30s",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line


def test_check_unit_counts_only_warning_as_success() -> None:
    """keyd check exits 1 only for WARNING (an internal error is 3, like
    every failure of the check itself), so 1 is the one extra success
    code; 2 (critical) and 3 (unknown) must fail the unit."""
    from keyd.errors import EXIT_CRITICAL, EXIT_INTERNAL, EXIT_UNKNOWN, EXIT_WARNING

    text = (UNITS / "keyd-check.service").read_text()
    codes = {
        int(code) for line in re.findall(r"^SuccessExitStatus=(.*)$", text, re.M) for code in line.split()
    }
    assert codes == {EXIT_WARNING}
    assert not codes & {EXIT_CRITICAL, EXIT_UNKNOWN, EXIT_INTERNAL}
