"""keyd.vocab is used, not restated: no module compares a state, status,
outcome or kind with a bare string equal to a vocabulary value, or passes
one as ``state=``/``status=``/... (README "Architecture": one place for each rule)."""

from __future__ import annotations

import ast
import enum
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyd import vocab

PKG = Path(__file__).resolve().parents[2] / "keyd"

ENUMS = [
    obj
    for obj in vars(vocab).values()
    if isinstance(obj, type) and issubclass(obj, enum.StrEnum) and obj.__module__ == vocab.__name__
]
VALUES = {member.value for cls in ENUMS for member in cls}
ROTATION_STATES = {s.value for s in vocab.RotationState}

#: keywords that name a vocabulary column or field
FIELDS = {"state", "status", "outcome", "kind", "severity", "channel", "reason", "event", "failed_step"}

#: (module, line text) of comparisons whose string is another, local vocabulary
#: that merely spells a value the same way
OTHER_WORDS = {
    ("actions/tokensink.py", 'if seen == "unknown":'),  # tokenvault.listed: same | changed | unknown
    ("actions/tokensink.py", 'if verdict == "new":'),  # tokenvault.judge: ours | adopt | new
    # vault.auth: token | approle (a config value, not check's problem kind "token")
    ("clients/vault_model.py", 'if cfg.auth == "token":'),
    (
        "config/build.py",
        'unused = ("role_id_file", "secret_id_file") if auth == "token" else ("token_file",)',
    ),
    ("config/build.py", 'if auth == "token":'),
}


def _strings(node: ast.AST) -> Iterator[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _strings(element)


def _keyed_by_rotation_state(node: ast.Dict) -> bool:
    keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
    return len(keys) >= 2 and all(k in ROTATION_STATES for k in keys)


def bare_vocabulary(source: str) -> Iterator[tuple[int, str]]:
    """(line, string) of each vocabulary value written as a bare string where
    it is compared, passed as a vocabulary field, or (rotation states) used
    as a mapping key."""
    for node in ast.walk(ast.parse(source)):
        found: list[ast.Constant] = []
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [c for c in _strings(side) if c.value in VALUES]
        elif isinstance(node, ast.keyword) and node.arg in FIELDS:
            found += [c for c in _strings(node.value) if c.value in VALUES]
        elif isinstance(node, ast.Dict) and _keyed_by_rotation_state(node):
            found += [k for k in node.keys if isinstance(k, ast.Constant)]
        yield from ((c.lineno, c.value) for c in found)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_bare_vocabulary(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    if rel == "vocab.py":
        return
    source = path.read_text()
    lines = source.splitlines()
    bare = [
        f"keyd/{rel}:{n}: {value!r}"
        for n, value in bare_vocabulary(source)
        if (rel, lines[n - 1].split("#")[0].strip()) not in OTHER_WORDS
    ]
    assert not bare, f"use the keyd.vocab member: {bare}"


def test_the_scan_finds_what_it_looks_for() -> None:
    source = (
        'if row.state == "published": pass\n'
        'x = row.status in ("active", "expired")\n'
        'move(row, state="failed")\n'
        'steps = {"planned": 1, "proven": 2}\n'
        'counts = {"failed": 1, "oldest": 2}\n'  # not keyed by rotation states
        'ok = name == "published_at"\n'  # not a vocabulary value
    )
    assert sorted(bare_vocabulary(source)) == [
        (1, "published"),
        (2, "active"),
        (2, "expired"),
        (3, "failed"),
        (4, "planned"),
        (4, "proven"),
    ]


def test_rotation_states_store_as_the_strings_they_were() -> None:
    """No migration: the members are the strings older rows hold."""
    assert [s.value for s in vocab.RotationState] == [
        "planned",
        "registered",
        "proven",
        "published",
        "retired",
        "failed",
    ]
