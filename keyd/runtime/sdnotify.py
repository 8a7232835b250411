"""systemd's notify protocol (sd_notify(3)), stdlib only.

``notify()`` sends one datagram to ``$NOTIFY_SOCKET`` and is a no-op when
the variable is unset (not started by systemd, or ``Type=simple``). A name
starting with ``@`` is an abstract socket (leading NUL byte). Failures are
logged and reported as ``False``: a broken notify socket must never stop
the daemon itself (systemd will notice the missing READY/WATCHDOG anyway).
The send never blocks: when the receiver's queue is full (nobody reading;
``net.unix.max_dgram_qlen`` is small) the datagram is dropped, because a
stalled control tick would stop the watchdog pings and leadership checks.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=ok"``); True if it was sent."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.send(state.encode())
    except OSError as exc:
        log.warning("sd_notify to %r failed: %s", address.replace("\0", "@"), exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def reloading() -> bool:
    """``RELOADING=1`` plus ``MONOTONIC_USEC`` (required by systemd >= 253's
    ``Type=notify-reload``, ignored by older versions)."""
    # CLOCK_MONOTONIC is what systemd compares against; this is a protocol
    # field, not keyd's notion of "now", so it does not go through Clock.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def extend_timeout(seconds: float, status: str | None = None) -> bool:
    """``EXTEND_TIMEOUT_USEC=``: ask systemd (>= 236) for ``seconds`` more
    than now before the start-up (or stop) timeout fires; older versions
    ignore it. keyd sends it only while its first scan advances."""
    usec = max(int(seconds * 1_000_000), 1)
    return notify(f"EXTEND_TIMEOUT_USEC={usec}" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between required ``WATCHDOG=1`` pings, or None when the
    watchdog is off. Honours ``$WATCHDOG_PID`` (the ping is only for us when
    it names this process)."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
