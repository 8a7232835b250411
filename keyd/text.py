"""Untrusted text on its way to a terminal, a mail header or the database.

Key files, Vault secrets and file names are written by others: a ``keyId``
may hold CR/LF, a ``userId`` a lone surrogate (``"\\udb37"`` is valid
JSON), a file name a byte that is not UTF-8. Three rules, each in one place:

* ``unsafe_char`` finds what a ZITADEL id never holds (control, format,
  surrogate, line/paragraph separator characters); the key-file parser
  refuses such ids, so they never become a key.
* ``escape`` makes any text one printable line — ``\\n``, ``\\x1b``,
  ``\\u202e``, ``\\udb37`` — for a terminal, a Nagios line or a mail
  header, where a raw control character could forge output.
* ``storable`` escapes only what a database cannot hold (NUL, lone
  surrogates), keeping every other character as it is.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Final

# Cc control, Cf format (bidi overrides, zero-width), Cs surrogate,
# Zl/Zp line and paragraph separators: never part of an id, and each can
# rewrite what a reader sees.
_UNSAFE: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _is_unsafe(char: str) -> bool:
    return not char.isprintable() and unicodedata.category(char) in _UNSAFE


def unsafe_char(text: str) -> str | None:
    """The first unsafe character as ``U+XXXX``, or None when there is none."""
    if text.isascii() and text.isprintable():
        return None
    for char in text:
        if _is_unsafe(char):
            return f"U+{ord(char):04X}"
    return None


def _escaped(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """One printable line: unsafe characters become backslash escapes."""
    if text.isprintable():
        return text
    return "".join(_escaped(c) if _is_unsafe(c) else c for c in text)


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped: what SQLite (UTF-8)
    and PostgreSQL (no NUL in text) can store. Other text is unchanged."""
    if text.isascii() and "\x00" not in text:
        return text
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return "".join(_escaped(c) if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def path_text(path: str | bytes) -> str:
    """A file name as text keyd can store and show: bytes that are not
    UTF-8 (``os.fsdecode`` keeps them as surrogates) become ``\\xff``."""
    name = os.fsdecode(path)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return storable(name)
