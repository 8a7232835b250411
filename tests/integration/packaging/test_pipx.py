"""The pipx path of docs/packaging.md, as documented: `pipx install` of the
wheel with the postgres extra gives a working `keyd`, and the documented
drop-ins make the shipped units start that `keyd` (`systemd-analyze verify`
insists that ExecStart's binary exists, so a unit still naming
/usr/bin/keyd, which only the Debian package creates, would fail)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs/packaging.md").read_text()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def documented_dropins() -> dict[str, str]:
    """``unit -> drop-in text`` from the ini blocks of docs/packaging.md."""
    blocks = re.findall(r"```ini\n# /etc/systemd/system/(\S+)\.d/\S+.*?\n(.*?)```", DOC, re.S)
    return dict(blocks)


def test_pipx_install_and_the_documented_dropins(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("keyd-*.whl")
    bin_dir = tmp_path / "pipx-bin"
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    pipx = Path(sys.executable).with_name("pipx")
    result = subprocess.run(
        [str(pipx), "install", f"{wheel}[postgres]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    keyd = bin_dir / "keyd"
    assert subprocess.run(
        [str(keyd), "--version"], capture_output=True, text=True, check=True
    ).stdout.startswith("keyd, version")
    venv_python = tmp_path / "pipx/venvs/keyd/bin/python"
    subprocess.run([str(venv_python), "-c", "import psycopg"], check=True)

    dropins = documented_dropins()
    assert set(dropins) == {"keyd.service", "keyd-check.service"}
    units = []
    for unit, text in dropins.items():
        shutil.copy(ROOT / "systemd" / unit, tmp_path / unit)
        (tmp_path / f"{unit}.d").mkdir()
        (tmp_path / f"{unit}.d/pipx.conf").write_text(text.replace("/opt/pipx/bin", str(bin_dir)))
        units.append(str(tmp_path / unit))
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
