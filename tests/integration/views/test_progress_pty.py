"""Progress of ``keyd scan``, ``keyd check`` and ``keyd probe`` on a real
terminal (a pty as stderr): drawn in place and cleared at the end; never
with ``--quiet``, ``--json`` or when stderr is not a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from keyd.cli.progress import CLEAR
from keyd.store.migrate import upgrade
from tests.support.daemon import KEYD
from tests.support.keyfiles import write_keyfile
from tests.support.keys import make_key_file

FILES = 30


def run(args: list[str], *, tty: bool = True) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) with stderr on a pty (or a pipe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYD_", "JOURNAL_"))}
    env.update(TERM="xterm", COLUMNS="300")
    if not tty:
        done = subprocess.run([*KEYD, *args], capture_output=True, text=True, env=env, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*KEYD, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read().decode()
    return proc.wait(timeout=120), out, err.decode()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for i in range(FILES):
        # far from the real clock's warning window: keyd check runs on wall time
        write_keyfile(
            tmp_path / "keys" / f"k{i:02}.json", f"key-{i:02}", f"svc-{i}", expires="2099-01-01T00:00:00Z"
        )
    upgrade(f"sqlite:///{tmp_path / 'keyd.db'}")
    path = tmp_path / "keyd.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "keyd.db"}"\n'
        f'[[sources]]\ntype = "directory"\npath = "{tmp_path / "keys"}"\n'
    )
    return path


def test_scan_shows_files_read_and_clears_the_line(config: Path) -> None:
    code, out, err = run(["--config", str(config), "scan"])
    assert code == 0, err
    assert f"1 source, {FILES} keys ({FILES} new" in out
    task = f"reading directory:{config.parent / 'keys'}"
    assert f"{task}: 0/{FILES} files (0%)" in err
    assert f"{task}: {FILES}/{FILES} files (100%)" in err
    assert err.rfind(CLEAR) > err.rfind("files (")  # the line is cleared at the end
    assert "reading" not in out


@pytest.mark.parametrize("extra", [["scan", "--quiet"], ["check", "--json"], ["check", "-q"]])
def test_no_progress_when_asked_not_to(config: Path, extra: list[str]) -> None:
    _, out, err = run(["--config", str(config), *extra])
    assert " files (" not in err and CLEAR not in err and " files (" not in out


def test_no_progress_without_a_terminal(config: Path) -> None:
    code, out, err = run(["--config", str(config), "scan"], tty=False)
    assert code == 0 and " files (" not in err and CLEAR not in err


def test_check_shows_the_scan(config: Path) -> None:
    code, out, err = run(["--config", str(config), "check"])
    assert out.startswith("KEYD OK"), (code, out, err)
    assert f"{FILES}/{FILES} files (100%)" in err


@pytest.mark.issuer
def test_probe_shows_keys_probed(tmp_path: Path, issuer) -> None:  # type: ignore[no-untyped-def]
    made = make_key_file(tmp_path / "keys", register_with=issuer)
    db = tmp_path / "keyd.db"
    upgrade(f"sqlite:///{db}")
    config = tmp_path / "keyd.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\n[issuer]\nurl = "{issuer.url}"\n'
        f'[[sources]]\ntype = "directory"\npath = "{tmp_path / "keys"}"\n'
    )
    assert run(["--config", str(config), "scan", "-q"])[0] == 0
    code, out, err = run(["--config", str(config), "probe", made.key_id])
    assert code == 0, (out, err)
    assert "probing: 0/1 keys (0%)" in err and "probing: 1/1 keys (100%)" in err
    _, out, err = run(["--config", str(config), "probe", made.key_id, "--json"])
    assert "probing: " not in err and CLEAR not in err and "probing: " not in out
