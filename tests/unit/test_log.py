"""keyd.log: one event per line, text or JSON, extras as fields, secrets
scrubbed, idempotent setup."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyd.log import ScrubFilter, setup_logging
from keyd.redact import Secret

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxMjMiLCJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXBhcnQ"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    """Leave the root logger as we found it (handlers and levels)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name in ("httpx", "httpcore", "apscheduler", "hvac", "urllib3"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format_key_value_with_extras() -> None:
    stream = io.StringIO()
    setup_logging("text", "INFO", stream)
    logging.getLogger("keyd.checks.probe").info(
        "probe %s", "ok", extra={"key_id": "2928349", "principal": "svc user", "n": 3}
    )
    (line,) = lines(stream)
    fields = line.split(" ", 1)
    assert fields[0].startswith("ts=") and fields[0].endswith("Z")
    assert (
        'level=info logger=keyd.checks.probe msg="probe ok" key_id=2928349 principal="svc user" n=3'
    ) in line


def test_text_format_is_one_line_even_with_newlines_and_tracebacks() -> None:
    stream = io.StringIO()
    setup_logging("text", "INFO", stream)
    log = logging.getLogger("keyd.x")
    log.warning("first\nsecond", extra={"path": 'a "quoted" value'})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = lines(stream)
    assert 'msg="first\\nsecond"' in first and 'path="a \\"quoted\\" value"' in first
    assert 'msg="failed"' in second and 'exc="Traceback' in second and "RuntimeError" in second


def test_json_format_one_object_per_line() -> None:
    stream = io.StringIO()
    setup_logging("json", "DEBUG", stream)
    log = logging.getLogger("keyd.y")
    log.debug(
        "hello", extra={"key_id": "k1", "count": 2, "token": Secret("s3cret-value"), "level": "not the level"}
    )
    log.info("world")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["level"] == "debug" and first["logger"] == "keyd.y" and first["msg"] == "hello"
    assert first["key_id"] == "k1" and first["count"] == 2
    assert first["token"] == "Secret([redacted])"
    assert first["extra_level"] == "not the level"  # base fields are never overwritten
    assert second["msg"] == "world"
    assert "s3cret-value" not in stream.getvalue()


def test_level_filters() -> None:
    stream = io.StringIO()
    setup_logging("text", "warning", stream)
    logging.getLogger("keyd.z").info("hidden")
    logging.getLogger("keyd.z").warning("shown")
    assert len(lines(stream)) == 1 and "shown" in stream.getvalue()


def test_chatty_libraries_quiet_unless_debug() -> None:
    stream = io.StringIO()
    setup_logging("text", "INFO", stream)
    logging.getLogger("httpx").info("HTTP Request: POST https://x/oauth/v2/token")
    assert stream.getvalue() == ""
    setup_logging("text", "DEBUG", stream)
    logging.getLogger("httpx").info("HTTP Request: POST https://x/oauth/v2/token")
    assert "HTTP Request" in stream.getvalue()


def test_idempotent_replaces_own_handler_keeps_others() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "INFO", first)
    setup_logging("json", "INFO", second)
    logging.getLogger("keyd.w").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    assert foreign in root.handlers
    assert sum(getattr(h, "_keyd_handler", False) for h in root.handlers) == 1
    root.removeHandler(foreign)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_scrub_filter_removes_jwt_and_pem(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging(fmt, "INFO", stream)
    log = logging.getLogger("keyd.leak")
    log.error("issuer said %s", f"invalid assertion {JWT}", extra={"body": PEM})
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        log.exception("with traceback")
    out = stream.getvalue()
    assert JWT not in out and "MIIEpAIBAAKCAQEA" not in out and "eyJ" not in out
    assert "[redacted]" in out
    assert len(lines(stream)) == 2


def test_scrub_filter_tolerates_bad_args() -> None:
    record = logging.LogRecord("keyd", logging.INFO, __file__, 1, "%d", ("x",), None)
    assert ScrubFilter().filter(record) is True


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        setup_logging("xml")
    with pytest.raises(ValueError, match="level"):
        setup_logging("text", "LOUD")


def test_default_stream_is_stderr_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    logging.getLogger("keyd.e").warning("to stderr")
    assert "to stderr" in capsys.readouterr().err


def _journal_run(code: str, *, match: bool) -> list[str]:
    """Run ``code`` in a fresh interpreter whose stderr is a pipe; with
    ``match`` JOURNAL_STREAM names that pipe, as systemd names the journal
    socket it connects to a unit's stderr."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + (0 if match else 1)}"
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=write_end, env=env)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        out = pipe.read()
    assert proc.wait(timeout=60) == 0
    return out.splitlines()


JOURNAL_CODE = (
    "import logging; from keyd.log import setup_logging; setup_logging('text', 'DEBUG');"
    "log = logging.getLogger('keyd.x'); log.error('e'); log.warning('w'); log.info('i');"
    "log.debug('d'); log.critical('c')"
)


def test_under_the_journal_lines_carry_the_syslog_priority_and_no_timestamp() -> None:
    got = _journal_run(JOURNAL_CODE, match=True)
    assert [line[:3] for line in got] == ["<3>", "<4>", "<6>", "<7>", "<2>"]
    assert got[1] == '<4>level=warning logger=keyd.x msg="w"'
    assert not any("ts=" in line for line in got)


def test_a_stderr_that_is_not_the_journal_keeps_plain_stamped_lines() -> None:
    got = _journal_run(JOURNAL_CODE, match=False)
    assert all(line.startswith("ts=") for line in got) and len(got) == 5


def test_json_lines_under_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    with open(tmp_path / "stderr", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("json", "INFO", stream)
        logging.getLogger("keyd.x").warning("careful", extra={"key_id": "1"})
    (line,) = (tmp_path / "stderr").read_text().splitlines()
    assert line.startswith("<4>{")
    assert json.loads(line[3:]) == {"level": "warning", "logger": "keyd.x", "msg": "careful", "key_id": "1"}
