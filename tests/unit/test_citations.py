"""The repository stands on its own: nothing cites the design notes,
house-style notes or ZITADEL notes that lived outside it, nor a tracker's
issue numbers or titles. What keyd relies on is in docs/zitadel.md and
docs/architecture.md; cite those (docs/architecture.md rule 13)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {
    ".git",
    ".venv",
    ".cache",
    "dist",
    "build",
    "demo-run",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "node_modules",
}
TEXT = {
    ".py",
    ".md",
    ".toml",
    ".ini",
    ".yml",
    ".yaml",
    ".cfg",
    ".txt",
    ".mako",
    ".service",
    ".timer",
    ".conf",
    ".sh",
    ".in",
    ".json",
    ".html",
    ".css",
    "",
}
# Spelled in pieces so that this file does not match itself.
OUTSIDE = "|".join(name + r"\.md" for name in ("DESIGN", "STYLE", "ZITADEL"))
FORBIDDEN = re.compile(rf"(?<![\w/])(?:{OUTSIDE})|\.\./shared/|\b[Ii]ssues? (?:#?\d|\")")


def repository_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in TEXT:
            out.append(path)
    return out


def test_no_citation_of_files_outside_the_repository_or_of_tracker_issues() -> None:
    found = []
    for path in repository_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert found == [], "\n".join(found)


def test_the_pages_cited_instead_exist_with_their_sections() -> None:
    zitadel = (ROOT / "docs/zitadel.md").read_text()
    architecture = (ROOT / "docs/architecture.md").read_text()
    assert all(f"## §{n} " in zitadel for n in range(1, 7))
    assert all(f"## §{n} " in architecture for n in range(1, 10))
    assert all(re.search(rf"^{n}\. \*\*", architecture, re.M) for n in range(1, 14))
