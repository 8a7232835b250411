"""Where a Vault secret keeps its key file (keyd.sources.vault.extract)."""

from __future__ import annotations

from typing import Any

import pytest

from keyd.errors import KeyFileError
from keyd.sources.vault import extract

SRC = "vault:secret/keys/a"


def test_fields_layout_is_the_secret_itself() -> None:
    data = {"type": "serviceaccount", "keyId": "1", "key": "pem", "userId": "u"}
    assert extract(data, "keyfile", SRC) is data


@pytest.mark.parametrize("value", ['{"type": "serviceaccount"}', {"type": "serviceaccount"}])
def test_one_field_layout_as_text_or_object(value: Any) -> None:
    assert extract({"keyfile": value, "note": "x"}, "keyfile", SRC) == value


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "is empty"),
        ({"keyfile": 3.5}, "not a number"),
        ({"keyfile": None}, "not null"),
        ({"keyfile": True}, "not a boolean"),
        ({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}, "'a', 'b', 'c', 'd', 'e', …"),
        ({"keyfile": "x" * (2 << 20)}, "limit"),
        ({"keyfile": {"n": float("nan")}}, None),
    ],
)
def test_odd_secrets_name_the_problem(data: dict[str, Any], words: str | None) -> None:
    try:
        extract(data, "keyfile", SRC)
    except KeyFileError as exc:
        assert exc.source == SRC
        if words:
            assert words in exc.problem
    else:
        assert words is None  # NaN is still "an object": the parser will refuse it


def test_deeply_nested_data_is_refused_not_a_crash() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(KeyFileError, match="nested too deeply"):
        extract({"keyfile": deep}, "keyfile", SRC)
