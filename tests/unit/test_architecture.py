"""The house rules that a reviewer would otherwise have to remember
(docs/architecture.md rules 1–3): data flows one way, one importer per client
library, "now" has one source, and actions work on frozen records
(``KeyRecord``, ``AlertRecord``), never on ORM objects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "keyd"

# Lower number = lower layer. A module may import its own layer or lower.
LAYERS = {
    "clock": 0,
    "errors": 0,
    "exposure": 0,
    "retry": 0,
    "redact": 0,
    "text": 0,
    "timeutil": 0,
    "urls": 0,
    "vocab": 0,
    "config": 0,
    "log": 0,
    "__init__": 0,
    "progress": 0,
    "store": 1,
    "clients": 1,
    "sources": 2,
    "inventory": 3,
    "checks": 4,
    "actions": 5,
    "report": 6,
    "runtime": 7,
    "cli": 8,
}

# third-party module -> the only places allowed to import it
OWNERS = {
    "hvac": ("clients/vault.py",),
    "smtplib": ("clients/smtp.py",),
    "apscheduler": ("runtime/scheduler.py",),
    "httpx": ("clients/",),
    "sqlalchemy": ("store/",),
    "alembic": ("store/",),
}


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def layer_of(relative: str) -> int:
    head = relative.split("/")[0].removesuffix(".py")
    return LAYERS[head]


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_layers_never_import_upward(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    mine = layer_of(rel)
    for name in imports(path):
        if not name.startswith("keyd."):
            continue
        target = name.split(".")[1]
        if target == "cli" and rel.startswith("cli"):
            continue
        assert LAYERS.get(target, 0) <= mine, f"keyd/{rel} imports {name}: upward in the flow"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_one_importer_per_client_library(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    for name in imports(path):
        top = name.split(".")[0]
        owners = OWNERS.get(top)
        if owners is not None:
            assert any(rel.startswith(o) for o in owners), f"keyd/{rel} imports {top}"


# ORM models stay inside the store: these layers get frozen records from it
NO_ORM = ("actions/",)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_actions_never_touch_orm_objects(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    if not rel.startswith(NO_ORM):
        return
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "keyd.store" and node.level == 0:
            assert all(alias.name != "models" for alias in node.names), (
                f"keyd/{rel} imports keyd.store.models"
            )
    assert "keyd.store.models" not in imports(path), f"keyd/{rel} imports keyd.store.models"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_clock_has_one_source(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    if rel == "clock.py":
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            call = f"{owner_name}.{node.func.attr}"
            assert call not in {"datetime.now", "datetime.utcnow", "time.time", "time.sleep", "date.today"}, (
                f"keyd/{rel}:{node.lineno} calls {call}()"
            )


def test_no_print_outside_the_cli() -> None:
    for path in modules():
        rel = str(path.relative_to(PKG))
        if rel.startswith("cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"keyd/{rel}:{node.lineno} prints"


MAX_POSITIONAL = 8  # more: take a value object


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_long_positional_parameter_lists(path: Path) -> None:
    rel = str(path.relative_to(PKG))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [a.arg for a in (*args.posonlyargs, *args.args) if a.arg not in ("self", "cls")]
            assert len(positional) <= MAX_POSITIONAL, (
                f"keyd/{rel}:{node.lineno} {node.name}() takes {len(positional)} positional parameters"
            )
