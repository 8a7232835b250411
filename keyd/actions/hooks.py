"""The ``after_publish`` command of a source (README "Rotation").

Run after a rotated key was written to every location, so consumers can
reload: an argv list executed directly (no shell, so no quoting or
injection through key ids or paths), in its own process group, with a
timeout after which the whole group is killed, told what happened through
the environment: ``KEYD_KEY_ID`` (the new key), ``KEYD_OLD_KEY_ID``,
``KEYD_PRINCIPAL``, ``KEYD_LOCATION`` (path or Vault ``mount/path``; one
run per location). A non-zero exit or the timeout raises ``HookFailed``
with the exit status and the last line of its output, scrubbed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from keyd.errors import KeydError
from keyd.redact import scrub

log = logging.getLogger(__name__)

_OUTPUT_LIMIT = 300


class HookFailed(KeydError):
    """The command failed, timed out or could not be started."""

    def __init__(self, argv: Sequence[str], problem: str) -> None:
        self.argv = list(argv)
        super().__init__(f"after_publish {argv[0] if argv else '?'}: {problem}")


@dataclass(frozen=True)
class Hook:
    argv: tuple[str, ...]
    timeout: timedelta = timedelta(seconds=30)


def run_hook(hook: Hook, env: Mapping[str, str]) -> None:
    """Run ``hook`` with ``env`` added to keyd's environment."""
    argv = list(hook.argv)
    seconds = hook.timeout.total_seconds()
    try:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise HookFailed(argv, f"cannot start: {exc.strerror or exc}") from None
    try:
        output, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise HookFailed(argv, f"still running after {seconds:g}s: killed") from None
    if proc.returncode != 0:
        last = _last_line(output)
        raise HookFailed(argv, f"exited with status {proc.returncode}" + (f": {last}" if last else ""))
    log.info("after_publish %s: ok for %s", argv[0], env.get("KEYD_LOCATION"))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("after_publish pid %d did not exit after SIGKILL", proc.pid)


def _last_line(output: bytes | None) -> str:
    lines = (output or b"").decode("utf-8", "replace").strip().splitlines()
    return scrub(lines[-1])[:_OUTPUT_LIMIT] if lines else ""
