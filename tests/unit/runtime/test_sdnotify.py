"""sd_notify against a real AF_UNIX datagram socket (path and abstract)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyd.runtime import sdnotify


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_unset_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False


def test_ready_with_status(listener: socket.socket) -> None:
    assert sdnotify.ready("3 keys, 0 problems") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=3 keys, 0 problems"


def test_helpers(listener: socket.socket) -> None:
    assert sdnotify.watchdog() and sdnotify.stopping() and sdnotify.status("s")
    assert [listener.recv(100) for _ in range(3)] == [b"WATCHDOG=1", b"STOPPING=1", b"STATUS=s"]


def test_extend_timeout(listener: socket.socket) -> None:
    assert sdnotify.extend_timeout(90) and sdnotify.extend_timeout(0.5, "first scan: 3 of 9 files")
    assert listener.recv(100) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert listener.recv(100) == b"EXTEND_TIMEOUT_USEC=500000\nSTATUS=first scan: 3 of 9 files"


def test_reloading_sends_monotonic_usec(listener: socket.socket) -> None:
    assert sdnotify.reloading()
    first, second = listener.recv(100).decode().split("\n")
    assert first == "RELOADING=1"
    name, value = second.split("=")
    assert name == "MONOTONIC_USEC" and int(value) > 0


def test_abstract_socket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"keyd-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_dead_socket_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "junk"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env) == expected


def test_a_full_socket_drops_the_datagram_instead_of_blocking(tmp_path: Path) -> None:
    """Nobody reads the socket: its small queue fills, and notify() must
    return False at once rather than stall the control tick."""
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path)}
        results = [sdnotify.notify("STATUS=x" * 100, env) for _ in range(2000)]
    assert results[0] is True
    assert results[-1] is False  # dropped, not blocked
