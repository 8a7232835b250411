"""The error tree drawn in keyd/errors.py's docstring is the real one: every
``KeydError`` subclass in the package appears under its actual parent, and
every class drawn exists."""

from __future__ import annotations

import importlib
import pkgutil
import re

import keyd
from keyd import errors
from keyd.errors import KeydError


def drawn() -> dict[str, str]:
    """Class name -> parent name, from the docstring's tree."""
    parents: dict[int, str] = {}
    out: dict[str, str] = {}
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^    ((?:[│ ] {3})*)(?:[├└]── )?(\w+)", line)
        if not match or not match.group(2)[0].isupper() and not match.group(2).startswith("_"):
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        name = match.group(2)
        parents[depth] = name
        if depth:
            out[name] = parents[depth - 1]
    return out


def real() -> dict[str, str]:
    for module in pkgutil.walk_packages(keyd.__path__, "keyd."):
        if not module.name.startswith("keyd._migrations") and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    out: dict[str, str] = {}
    stack = [KeydError]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("keyd."):
                out[sub.__name__] = cls.__name__
                stack.append(sub)
    return out


def test_the_drawn_tree_is_the_real_one() -> None:
    assert drawn() == real()


def drawn_modules() -> dict[str, str | None]:
    """Class name -> the module its line names (``actions/tokenvault.py``), or None."""
    out: dict[str, str | None] = {}
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^    [│├└─ ]*(\w+)(?:\s+(\S+\.py))?\s*$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def test_each_class_defined_elsewhere_names_its_module() -> None:
    real()  # imports every module
    where: dict[str, str | None] = {}
    stack = [KeydError]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("keyd."):
                module = sub.__module__.removeprefix("keyd.").replace(".", "/") + ".py"
                where[sub.__name__] = None if module == "errors.py" else module
                stack.append(sub)
    drawn_at = drawn_modules()
    assert {name: drawn_at.get(name) for name in where} == where
