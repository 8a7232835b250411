"""Pure parts of the Vault client: tree walking limits and answer parsing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyd.clients import vault_model
from keyd.clients.vault_model import health_from, secret_from, transport_problem, walk_tree
from keyd.errors import VaultUnavailable


def test_walk_tree_collects_nested_secrets() -> None:
    tree = {
        "p": [("a", 1), ("sub/", None)],
        "p/sub": [("b", 2), ("deeper/", None)],
        "p/sub/deeper": [("c", 3)],
    }
    assert walk_tree("secret", "p", lambda f: tree[f]) == {"p/a": 1, "p/sub/b": 2, "p/sub/deeper/c": 3}
    assert walk_tree("secret", "", lambda f: [("x", 0)] if f == "" else []) == {"x": 0}


def test_walk_tree_refuses_partial_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated listing would make the rest look deleted: fail the source."""
    with pytest.raises(VaultUnavailable, match="nested more than"):
        walk_tree("secret", "p", lambda folder: [("d/", None)])
    monkeypatch.setattr(vault_model, "MAX_LIST_ENTRIES", 5)
    with pytest.raises(VaultUnavailable, match="narrower prefix"):
        walk_tree("secret", "p", lambda folder: [(f"k{i}", i) for i in range(6)])


def test_secret_from_answers() -> None:
    good = {"data": {"data": {"k": "v"}, "metadata": {"version": 3, "custom_metadata": None}}}
    secret = secret_from(good, "secret/x")
    assert secret is not None and secret.version == 3 and secret.custom_metadata == {}
    assert secret_from(None, "secret/x") is None
    assert secret_from({"data": {"data": None, "metadata": {}}}, "secret/x") is None
    with pytest.raises(VaultUnavailable):
        secret_from({"nope": 1}, "secret/x")
    with pytest.raises(VaultUnavailable):
        secret_from("<html>", "secret/x")


def test_health_from_answers() -> None:
    health = health_from({"initialized": True, "sealed": True, "version": "2.7.2"}, "a")
    assert health.sealed and health.initialized and not health.standby
    with pytest.raises(VaultUnavailable):
        health_from(None, "a")


def test_transport_problem_never_echoes_the_exception() -> None:
    assert (
        transport_problem(ValueError("secret body"), timedelta(seconds=3)) == "unexpected answer (ValueError)"
    )
