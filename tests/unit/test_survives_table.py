"""Every test the "What keyd survives" tables name exists (README.md and,
where present, docs/survives.md): a guarantee without its test is a
placeholder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def _refs() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "survives.md"):
        if not doc.exists():
            continue
        text = doc.read_text()
        start = text.find("survives")
        for line in text[start:].splitlines():
            if line.startswith("|"):
                found += [(doc.name, path, name) for path, name in _REF.findall(line)]
    return found


def test_the_tables_name_tests() -> None:
    assert len(_refs()) >= 10


@pytest.mark.parametrize(("doc", "path", "name"), _refs())
def test_each_named_test_exists(doc: str, path: str, name: str | None) -> None:
    target = ROOT / path
    assert target.is_file(), f"{doc} names {path}, which does not exist"
    if name:
        assert re.search(rf"^def {name}\(", target.read_text(), re.M), f"{doc}: {path}::{name}"
