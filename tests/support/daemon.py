"""Run the real ``keyd run`` process as systemd would: a notify socket
that records every datagram, a config file, a log file."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

KEYD = [sys.executable, "-m", "keyd.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Notifications:
    """The notify socket systemd would hold, recording every datagram. Like
    systemd it reads continuously (a thread): a test busy elsewhere never
    lets the kernel queue (10 datagrams) fill, which would make keyd drop
    a notification (sdnotify never blocks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []
        self.sock.settimeout(0.1)
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def wait_for(self, prefix: str, timeout: float = 20) -> str:
        """The next datagram starting with ``prefix`` (or fail with all seen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            self.seen.append(message)
            if message.startswith(prefix):
                return message
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {self.seen}")

    def drain(self) -> list[str]:
        """Every datagram received since the last call (no waiting)."""
        got: list[str] = []
        while True:
            try:
                got.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.seen.extend(got)
        return got

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self.sock.close()


def start_keyd(
    config: Path,
    notes: Notifications,
    log: Path,
    *,
    watchdog_usec: int = 1_500_000,
    command: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``keyd --config CONFIG run`` with NOTIFY_SOCKET and WATCHDOG_USEC set
    (``command`` instead of ``python -m keyd.cli``, e.g. a crash-point wrapper)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYD_", "VAULT_", "BAO_"))}
    env.update(NOTIFY_SOCKET=str(notes.path), WATCHDOG_USEC=str(watchdog_usec))
    with log.open("wb") as out:
        return subprocess.Popen(
            [*(command or KEYD), "--config", str(config), "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until(predicate: object, timeout: float = 30, what: str = "condition") -> None:
    """Poll ``predicate()`` every 0.2 s until it is true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


FAST_TICKS = """[daemon]
scan_interval = "1s"
evaluate_interval = "1s"
probe_tick = "1s"
tokens_tick = "1s"
rotate_tick = "1s"
outbox_tick = "1s"
control_interval = "1s"
"""


def write_config(
    path: Path,
    *,
    db_url: str,
    keys: Path,
    issuer_url: str | None = None,
    vault: tuple[str, str] | None = None,
    tokens_path: str | None = None,
    smtp: tuple[str, int] | None = None,
    http_port: int | None = None,
    fast_ticks: bool = False,
    head: str = "",
    issuer_extra: str = "",
    extra: str = "",
) -> Path:
    """A keyd.toml with the sections the arguments ask for. ``vault`` is
    (addr, token): the token goes to a 0600 ``vault-token`` file beside
    the config, as an operator would do (never into the TOML). ``head``
    holds top-level keys, ``issuer_extra`` lines for [issuer], ``extra``
    further sections."""
    parts = [head, f'[database]\nurl = "{db_url}"\n', f'[[sources]]\ntype = "directory"\npath = "{keys}"\n']
    if issuer_url:
        parts.append(f'[issuer]\nurl = "{issuer_url}"\n{issuer_extra}')
    if vault:
        token_file = path.parent / "vault-token"
        token_file.write_text(vault[1])
        token_file.chmod(0o600)
        parts.append(f'[vault]\naddr = "{vault[0]}"\ntoken_file = "{token_file}"\n')
    if tokens_path:
        parts.append(f'[tokens]\nmount = "secret"\npath = "{tokens_path}"\n')
    if smtp:
        parts.append(
            f'[alerts.email]\nhost = "{smtp[0]}"\nport = {smtp[1]}\nsecurity = "none"\n'
            'from = "keyd@test.example"\nto = ["ops@test.example"]\n'
        )
    if http_port:
        parts.append(f'[http]\nlisten = "127.0.0.1:{http_port}"\n')
    if fast_ticks:
        parts.append(FAST_TICKS)
    path.write_text("\n".join([*parts, extra]))
    return path
