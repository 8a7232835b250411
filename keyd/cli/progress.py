"""Progress lines on a terminal for ``keyd scan``, ``keyd check`` and
``keyd probe``: ``reading directory:/etc/keyd/keys: 420/1000 files (42%),
ETA 12s`` redrawn in place on stderr.

Only when stderr is a terminal (so never under systemd, in cron mail, in a
pipe or a log file), ``--quiet`` is not given and the output is not
``--json``. A log record clears the line before it is written, so
warnings never land in the middle of a progress line; the line is gone
when the task ends, so the command's own output follows on a clean
terminal. Redrawn at most ten times a second.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from keyd import progress
from keyd.clock import Clock
from keyd.report.render import shorten
from keyd.timeutil import format_duration

CLEAR = "\r\x1b[K"


@dataclass
class _Task:
    total: int | None
    unit: str
    started: float
    done: int = 0


class TerminalProgress:
    """A ``keyd.progress.Listener`` drawing one line on ``stream``."""

    def __init__(self, stream: TextIO, clock: Clock, *, interval: float = 0.1) -> None:
        self._stream = stream
        self._clock = clock
        self._interval = interval
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.RLock()
        self._drawn = False
        self._last = float("-inf")

    def begin(self, task: str, total: int | None, unit: str) -> None:
        with self._lock:
            self._tasks[task] = _Task(total, unit, self._clock.monotonic())
            self._draw(task)

    def advance(self, task: str, n: int) -> None:
        with self._lock:
            state = self._tasks.get(task)
            if state is None:
                return
            state.done += n
            finished = state.total is not None and state.done >= state.total
            if finished or self._clock.monotonic() - self._last >= self._interval:
                self._draw(task)

    def end(self, task: str) -> None:
        with self._lock:
            self._tasks.pop(task, None)
            self.clear()

    def clear(self) -> None:
        with self._lock:
            if self._drawn:
                self._stream.write(CLEAR)
                self._stream.flush()
                self._drawn = False

    def line(self, task: str, width: int = 200) -> str:
        """``task: done/total unit (pct%), ETA …``; a long task name (a
        path) is cut in the middle so the numbers always fit ``width``."""
        state = self._tasks[task]
        if state.total is None:
            text = f"{state.done} {state.unit}"
        else:
            text = f"{state.done}/{state.total} {state.unit}"
            if state.total:
                text += f" ({100 * state.done // state.total}%)"
            elapsed = self._clock.monotonic() - state.started
            if 0 < state.done < state.total and elapsed > 0:
                left = elapsed / state.done * (state.total - state.done)
                text += f", ETA {format_duration(max(1, round(left)))}"
        return f"{shorten(task, max(width - len(text) - 2, 8))}: {text}"[: max(width, 10)]

    def _draw(self, task: str) -> None:
        self._stream.write(CLEAR + self.line(task, _width(self._stream) - 1))
        self._stream.flush()
        self._drawn = True
        self._last = self._clock.monotonic()


class _ClearFirst(logging.Filter):
    """Clears the progress line before a log record is written."""

    def __init__(self, terminal: TerminalProgress) -> None:
        super().__init__()
        self._terminal = terminal

    def filter(self, record: logging.LogRecord) -> bool:
        self._terminal.clear()
        return True


def _width(stream: TextIO) -> int:
    """Columns of the terminal: ``$COLUMNS``, else the stream's own size
    (a fresh pty says 0), else 80."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return columns or 80


def wanted(stream: TextIO, *, quiet: bool, as_json: bool) -> bool:
    """Progress only for a person at a terminal (module docstring)."""
    if quiet or as_json or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def terminal_progress(clock: Clock, *, quiet: bool, as_json: bool) -> Iterator[None]:
    """Report progress on stderr inside the block, when ``wanted``."""
    stream = sys.stderr
    if not wanted(stream, quiet=quiet, as_json=as_json):
        yield
        return
    terminal = TerminalProgress(stream, clock)
    guard = _ClearFirst(terminal)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(guard)
    try:
        with progress.reporting(terminal):
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(guard)
        terminal.clear()
