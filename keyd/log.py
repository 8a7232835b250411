"""Logging setup: one event per line on stderr (journald adds its own
timestamp and unit), as ``key=value`` text or one JSON object per line
(docs/architecture.md rule 6).

Extra fields travel the stdlib way and become fields of the event::

    log.info("probe ok", extra={"key_id": key.key_id, "principal": key.principal})

    ts=2026-11-29T03:36:13.123Z level=info logger=keyd.checks.probe msg="probe ok" key_id=29 ...

A ``ScrubFilter`` on the handler runs ``keyd.redact.scrub`` over the final
message, string extras and tracebacks: defence in depth against a JWT or a
PEM that slipped into a log call (the first defence is ``Secret``).

Under systemd, when stderr is the journal (``$JOURNAL_STREAM`` names
stderr's device and inode, as systemd sets it for ``StandardError=journal``),
each line starts with its syslog priority (``<3>`` error, ``<4>`` warning,
``<6>`` info, ``<7>`` debug; sd-daemon(3)) and drops keyd's ``ts``: the
journal stamps every entry itself, and ``journalctl -u keyd -p warning``
filters on the priority.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from keyd.redact import scrub

FORMATS = ("text", "json")
# Libraries that log every request or job run at INFO; keyd logs what matters
# about them itself. They speak again at DEBUG.
CHATTY_LOGGERS = ("httpx", "httpcore", "apscheduler", "hvac", "urllib3", "alembic")
_BASE_FIELDS = ("ts", "level", "logger", "msg")
_MARK = "_keyd_handler"  # attribute that identifies our handler (idempotence)
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_EXC_FORMATTER = logging.Formatter()
# sd-daemon(3) / syslog(3) priorities by logging level (rounded down).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra={...}`` fields of a record (anything not standard)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class ScrubFilter(logging.Filter):
    """Scrub JWT- and private-PEM-shaped text from the rendered message,
    string extras, the traceback and stack info. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: let the handler report it as usual
            return True
        record.msg, record.args = scrub(message), None
        for key, value in extra_fields(record).items():
            if isinstance(value, str):
                setattr(record, key, scrub(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def syslog_priority(levelno: int) -> int:
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


def stream_is_journal(stream: IO[str], env: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal's socket: ``$JOURNAL_STREAM`` is
    ``<device>:<inode>`` of the stream systemd connected (sd-daemon(3)). A
    redirected stderr (``2>file``, a pipe) does not match, so a shell inside
    a unit still gets plain lines."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):  # no fileno (StringIO), no/odd variable
        return False


class _EventFormatter(logging.Formatter):
    """Turns a record into ordered (name, value) fields. With ``journal``
    each line gets the ``<N>`` priority prefix and no ``ts`` field."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def line(self, record: logging.LogRecord, text: str) -> str:
        return f"<{syslog_priority(record.levelno)}>{text}" if self.journal else text

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: list[tuple[str, Any]] = [] if self.journal else [("ts", ts.replace("+00:00", "Z"))]
        out += [
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        for key, value in extra_fields(record).items():
            out.append((f"extra_{key}" if key in _BASE_FIELDS else key, value))
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(self.formatException(record.exc_info))
        if record.exc_text:
            out.append(("exc", record.exc_text))
        if record.stack_info:
            out.append(("stack", record.stack_info))
        return out


class TextFormatter(_EventFormatter):
    """``key=value`` pairs (logfmt); ``msg`` and any value with spaces,
    quotes, ``=`` or control characters are JSON-quoted, so one event is
    always one line."""

    def format(self, record: logging.LogRecord) -> str:
        return self.line(
            record,
            " ".join(
                f"{key}={_text_value(value, force_quote=key == 'msg')}" for key, value in self.fields(record)
            ),
        )


class JsonFormatter(_EventFormatter):
    """One JSON object per line; non-JSON values are rendered with ``str``
    (a ``Secret`` renders redacted)."""

    def format(self, record: logging.LogRecord) -> str:
        return self.line(
            record,
            json.dumps(
                {key: _json_value(value) for key, value in self.fields(record)},
                ensure_ascii=False,
                default=str,
            ),
        )


def _text_value(value: Any, *, force_quote: bool = False) -> str:
    text = value if isinstance(value, str) else str(value)
    if force_quote or not text or not text.isprintable() or any(c in text for c in ' ="\\'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time, so a handler set
    up under a redirected stderr (tests, a reloading daemon) never writes
    to a stream that has since been closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def setup_logging(
    fmt: str = "text", level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log event to ``stream`` (default: ``sys.stderr`` at call
    time) in ``fmt`` ("text" or "json") at ``level`` and above.

    Configures the root logger so library events share the format.
    Idempotent: a second call replaces keyd's handler instead of adding one,
    and leaves handlers it did not install (e.g. pytest's) alone. Raises
    ``ValueError`` for an unknown format or level.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (use 'text' or 'json')")
    number = _level_number(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler: logging.StreamHandler[IO[str]] = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    setattr(handler, _MARK, True)
    handler.addFilter(ScrubFilter())
    journal = stream_is_journal(stream if stream is not None else sys.stderr)
    formatter = TextFormatter if fmt == "text" else JsonFormatter
    handler.setFormatter(formatter(journal=journal))
    root.addHandler(handler)
    root.setLevel(number)
    quiet = logging.NOTSET if number <= logging.DEBUG else logging.WARNING
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return handler


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING or ERROR)")
    return number
