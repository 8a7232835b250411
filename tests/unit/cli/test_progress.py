"""The terminal progress line: what it says, how often it is drawn, and
that nothing listens unless the CLI installs a listener."""

from __future__ import annotations

import io

from keyd import progress
from keyd.cli.progress import CLEAR, TerminalProgress, wanted
from keyd.clock import FakeClock


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_counts_percent_and_eta() -> None:
    clock = FakeClock()
    term = TerminalProgress(io.StringIO(), clock)
    term.begin("reading dir", 200, "files")
    assert term.line("reading dir") == "reading dir: 0/200 files (0%)"
    clock.advance(10)
    term.advance("reading dir", 50)
    assert term.line("reading dir") == "reading dir: 50/200 files (25%), ETA 30s"
    term.advance("reading dir", 150)
    assert term.line("reading dir") == "reading dir: 200/200 files (100%)"


def test_long_task_names_are_cut_in_the_middle() -> None:
    term = TerminalProgress(io.StringIO(), FakeClock())
    task = "reading directory:/" + "very/" * 30 + "deep/keys"
    term.begin(task, 10, "files")
    line = term.line(task, 60)
    assert len(line) <= 60 and line.endswith(": 0/10 files (0%)") and "…" in line


def test_redraws_at_most_ten_times_a_second_and_clears_at_the_end() -> None:
    clock = FakeClock()
    out = io.StringIO()
    term = TerminalProgress(out, clock)
    term.begin("probing", 1000, "keys")
    for _ in range(500):
        term.advance("probing", 1)  # no time passes: no redraw
    clock.advance(0.1)
    term.advance("probing", 1)
    term.advance("probing", 499)  # the last item is always drawn
    term.end("probing")
    text = out.getvalue()
    assert text.count(CLEAR) == 4  # begin, after 0.1 s, at 1000/1000, the final clear
    assert text.endswith(CLEAR) and "1000/1000 keys (100%)" in text


def test_unknown_total() -> None:
    term = TerminalProgress(io.StringIO(), FakeClock())
    term.begin("listing", None, "secrets")
    term.advance("listing", 3)
    assert term.line("listing") == "listing: 3 secrets"


def test_nobody_listens_by_default_and_listeners_never_break_work() -> None:
    progress.begin("x", 1, "files")  # no listener: nothing happens
    progress.advance("x")

    class Broken:
        def begin(self, task: str, total: int | None, unit: str) -> None:
            raise RuntimeError("boom")

        def advance(self, task: str, n: int) -> None:
            raise RuntimeError("boom")

        def end(self, task: str) -> None:
            raise RuntimeError("boom")

    with progress.reporting(Broken()):
        progress.begin("x", 1, "files")
        progress.advance("x")
        progress.end("x")


def test_wanted_only_on_a_terminal_without_quiet_or_json(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TERM", "xterm")
    assert wanted(Tty(), quiet=False, as_json=False)
    assert not wanted(Tty(), quiet=True, as_json=False)
    assert not wanted(Tty(), quiet=False, as_json=True)
    assert not wanted(io.StringIO(), quiet=False, as_json=False)
    monkeypatch.setenv("TERM", "dumb")
    assert not wanted(Tty(), quiet=False, as_json=False)
