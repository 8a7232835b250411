"""Every ``--json`` output carries a documented schema id (docs/json.md):
each command with a ``--json`` option names its schema in its help, every
schema id in the code is listed in docs/json.md and the other way round,
and only the one helper (``keyd.cli.common.echo_json``) prints JSON."""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from keyd.cli import cli, main
from tests.support.keys import make_key_file

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_ID = re.compile(r"keyd\.[a-z-]+/\d+")
DOCUMENTED = set(SCHEMA_ID.findall((ROOT / "docs/json.md").read_text()))


def commands(group: click.Group, prefix: str = "keyd") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += commands(command, f"{prefix} {name}")
        else:
            out.append((f"{prefix} {name}", command))
    return out


def test_every_json_option_names_a_documented_schema() -> None:
    with_json = [
        (name, c)
        for name, c in commands(cli)
        if any("--json" in p.opts for p in c.params if isinstance(p, click.Option))
    ]
    assert len(with_json) >= 6
    for name, command in with_json:
        option = next(p for p in command.params if "--json" in getattr(p, "opts", ()))
        named = SCHEMA_ID.findall(getattr(option, "help", "") or "")
        assert named and set(named) <= DOCUMENTED, f"{name} --json: schema not in docs/json.md"


def test_code_and_docs_list_the_same_schemas() -> None:
    in_code = set()
    for path in (ROOT / "keyd").rglob("*.py"):
        in_code |= set(SCHEMA_ID.findall(path.read_text()))
    assert in_code == DOCUMENTED


def test_only_the_helper_prints_json() -> None:
    for path in (ROOT / "keyd/cli").glob("*.py"):
        if path.name == "common.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "dumps":
                pytest.fail(f"{path.name}:{node.lineno} prints JSON itself: use echo_json")


def test_inspect_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = make_key_file(tmp_path, expires_at=datetime(2027, 6, 1, tzinfo=UTC))
    assert main(["inspect", "--json", "--at", "2026-01-01T00:00:00+01:00", str(key.path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc)[:3] == ["schema", "at", "keys"]
    assert doc["schema"] == "keyd.inspect/1" and doc["at"] == "2025-12-31T23:00:00Z"
    (row,) = doc["keys"]
    assert "status" not in row and row["expiry_status"] == "valid"
    assert row["expires_at"] == "2027-06-01T00:00:00Z"
