"""Progress of long interactive runs, reported from where the work is done.

The stages call ``begin(task, total, unit)``, ``advance(task)`` and
``end(task)``; by default nobody listens (``keyd run``, systemd, tests,
``--json``, pipes). Only the CLI installs a listener, for ``keyd scan``,
``keyd check`` and ``keyd probe`` when stderr is a terminal and
``--quiet`` is not given (``keyd.cli.progress``), with ``reporting()``.

A process-wide listener rather than a parameter: progress is a property
of the invocation, not of the data flow, and threading an argument
through every source and round would widen every signature for a side
channel. Calls are cheap when nobody listens and never raise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger(__name__)


class Listener(Protocol):
    def begin(self, task: str, total: int | None, unit: str) -> None: ...

    def advance(self, task: str, n: int) -> None: ...

    def end(self, task: str) -> None: ...


_lock = threading.Lock()
_listener: Listener | None = None


@contextmanager
def reporting(listener: Listener) -> Iterator[None]:
    """Send progress to ``listener`` inside the block."""
    global _listener
    with _lock:
        previous, _listener = _listener, listener
    try:
        yield
    finally:
        with _lock:
            _listener = previous


def _call(method: str, *args: object) -> None:
    listener = _listener
    if listener is None:
        return
    try:
        getattr(listener, method)(*args)
    except Exception as exc:  # progress must never break the work it reports on
        log.debug("progress listener failed: %s", exc)


def begin(task: str, total: int | None, unit: str) -> None:
    """``task`` starts; ``total`` items of ``unit`` (None: unknown)."""
    _call("begin", task, total, unit)


def advance(task: str, n: int = 1) -> None:
    _call("advance", task, n)


def end(task: str) -> None:
    _call("end", task)
