"""keyd.text: what reaches a terminal, a mail header or the database."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyd.store.engine import _storable
from keyd.text import escape, path_text, storable, unsafe_char


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("292834923480293", "292834923480293"),
        ("a\r\nBcc: x", "a\\r\\nBcc: x"),
        ("\x1b[2J\x1b[31mOK", "\\x1b[2J\\x1b[31mOK"),
        ("svc\u202eevil", "svc\\u202eevil"),  # right-to-left override
        ("x\udb37", "x\\udb37"),
        ("tab\there", "tab\\there"),
        ("Zürich \u00a0ok", "Zürich \u00a0ok"),  # letters and spaces stay
        ("C:\\keys\\a.json", "C:\\keys\\a.json"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert escape(raw) == shown


@given(st.text())
def test_escape_is_always_one_printable_line(text: str) -> None:
    shown = escape(text)
    assert unsafe_char(shown) is None
    assert "\n" not in shown and "\r" not in shown
    shown.encode("utf-8")  # no surrogate left


@given(st.text())
def test_storable_is_what_databases_hold(text: str) -> None:
    kept = storable(text)
    assert "\x00" not in kept
    kept.encode("utf-8")
    if "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert kept is text


def test_unsafe_char_names_the_first() -> None:
    assert unsafe_char("ok") is None
    assert unsafe_char("a\x00b\n") == "U+0000"
    assert unsafe_char("\u2028") == "U+2028"


def test_path_text_shows_non_utf8_names_as_escapes() -> None:
    assert path_text(b"/k/bad\xff.json") == "/k/bad\\xff.json"
    assert path_text(os.fsdecode(b"/k/bad\xff.json")) == "/k/bad\\xff.json"
    assert path_text("/k/ok.json") == "/k/ok.json"
    assert path_text("/k/x\udb37") == "/k/x\\udb37"


_BOUND = st.recursive(
    st.one_of(st.text(), st.integers(), st.none(), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=20,
)


@given(_BOUND)
def test_bound_parameters_are_copied_only_where_a_text_is_escaped(value: object) -> None:
    """The engine's parameter hook escapes every text in a row or a list of
    rows, and hands on the very same object when none needed it (a probe
    round's executemany binds thousands of values: copying them all cost
    more than checking them)."""
    out = _storable(value)

    def texts(v: object) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, dict):
            return [t for x in v.values() for t in texts(x)]
        if isinstance(v, list | tuple):
            return [t for x in v for t in texts(x)]
        return []

    before, after = texts(value), texts(out)
    assert after == [storable(t) for t in before]
    assert (out is value) == all(storable(t) is t for t in before)
    assert type(out) is type(value)
