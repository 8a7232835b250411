"""after_publish: argv without a shell, told the key ids, principal and
location; failures and hangs are HookFailed with what happened."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from keyd.actions.hooks import Hook, HookFailed, run_hook

ENV = {"KEYD_KEY_ID": "new", "KEYD_OLD_KEY_ID": "old", "KEYD_PRINCIPAL": "u", "KEYD_LOCATION": "/k/a.json"}


def test_hook_gets_the_environment_and_no_shell(tmp_path: Path):
    out = tmp_path / "seen"
    script = (
        "import os, sys; open(sys.argv[1], 'w').write(' '.join(os.environ[k] for k in "
        "('KEYD_KEY_ID', 'KEYD_OLD_KEY_ID', 'KEYD_PRINCIPAL', 'KEYD_LOCATION')) "
        "+ '|' + sys.argv[2])"
    )
    run_hook(Hook((sys.executable, "-c", script, str(out), "$HOME;x")), ENV)
    assert out.read_text() == "new old u /k/a.json|$HOME;x"  # the argument was not expanded


def test_failing_hook_says_status_and_last_line():
    with pytest.raises(HookFailed, match=r"status 3: reload refused"):
        run_hook(
            Hook((sys.executable, "-c", "import sys; print('x'); print('reload refused'); sys.exit(3)")), ENV
        )


def test_missing_program_is_a_failure_not_a_crash():
    with pytest.raises(HookFailed, match="cannot start"):
        run_hook(Hook(("/nonexistent/reload",)), ENV)


def test_hanging_hook_is_killed_with_its_children(tmp_path: Path):
    pidfile = tmp_path / "child"
    script = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(p.pid)); "
        "time.sleep(60)"
    )
    with pytest.raises(HookFailed, match="still running after 2s"):
        run_hook(Hook((sys.executable, "-c", script, str(pidfile)), timeout=timedelta(seconds=2)), ENV)
    child = int(pidfile.read_text())
    for _ in range(50):  # the grandchild was in the killed process group
        if not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the hook's child survived the timeout")
