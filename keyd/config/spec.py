"""How a config key is declared: once, as the dataclass field it fills.

``key(...)`` is a dataclass field specifier that carries a ``Key``: the
key's kind, default, range or choices, whether it names a secret file, and
a one-line doc. ``section`` makes a frozen dataclass whose ``key`` fields
are the keys of one TOML table. Everything else — the unknown-key check,
the ``KEYD_*`` overrides, the typed reading with its error messages, the
tests that keep docs/configuration.md and examples/keyd.toml complete —
is derived from these declarations (``keyd.config.schema``,
``keyd.config.build``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar, dataclass_transform

if TYPE_CHECKING:
    from keyd.config.read import Table

# What a value in the file is. "secret" is the path of a file holding a
# secret (resolved by the section's finish hook, with the credential named
# here); "table" is a sub-section (``section=``) or a free-form table
# (``check=``); "tables" is an array of tables (``[[sources]]``).
KINDS = ("str", "int", "float", "bool", "duration", "path", "list", "secret", "table", "tables")
# Kinds a KEYD_<SECTION>_<KEY> variable can override (config/read.py converts them).
SCALAR_KINDS = ("str", "int", "float", "bool", "duration", "path")

# Extra validation of a present, well-typed value: (table, key, value) -> the
# value to store. It raises through ``table.fail`` so errors name file and key.
Check = Callable[["Table", str, Any], Any]


@dataclass(frozen=True)
class Key:
    """One key of ``keyd.toml``: everything keyd knows about it."""

    kind: str
    doc: str  # one line, for readers of the model; docs/configuration.md says more
    toml: str = ""  # the name in the file; the field's name unless given
    low: Any = None  # inclusive range of an int or a duration
    high: Any = None
    positive: bool | None = None  # durations: > 0 unless False; numbers: > 0 if True
    choices: tuple[str, ...] = ()  # a string must be one of these
    required: str | None = None  # the problem to report when it is absent
    nonempty: bool = True  # strings: not blank; lists: at least one value
    must_exist: bool = False  # paths
    credential: str | None = None  # secret: $CREDENTIALS_DIRECTORY/<credential>
    env_var: str | None = None  # secret: last resort (only VAULT_TOKEN)
    section: type | None = None  # table: the dataclass of the sub-section
    variants: tuple[type, ...] = ()  # tables: dataclasses chosen by their ``type`` key
    check: Check | None = None


def key(
    kind: str,
    *,
    doc: str,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    toml: str = "",
    low: Any = None,
    high: Any = None,
    positive: bool | None = None,
    choices: tuple[str, ...] = (),
    required: bool | str = False,
    nonempty: bool = True,
    must_exist: bool = False,
    credential: str | None = None,
    env_var: str | None = None,
    section: type | None = None,
    variants: tuple[type, ...] = (),
    check: Check | None = None,
) -> Any:
    """Declare a config key as a dataclass field (see ``Key`` for the arguments).

    ``required=True`` reports "is required"; a string is the problem to
    report instead. A key without ``default`` must be passed to the
    dataclass (it is required whenever its section is present).
    """
    assert kind in KINDS, kind
    problem = "is required" if required is True else (required or None)
    spec = Key(
        kind=kind,
        doc=doc,
        toml=toml,
        low=low,
        high=high,
        positive=positive,
        choices=choices,
        required=problem,
        nonempty=nonempty,
        must_exist=must_exist,
        credential=credential,
        env_var=env_var,
        section=section,
        variants=variants,
        check=check,
    )
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"key": spec})
    return field(default=default, metadata={"key": spec})


T = TypeVar("T")


@dataclass_transform(field_specifiers=(key, field))
def section(cls: type[T]) -> type[T]:
    """A frozen dataclass whose ``key(...)`` fields are one table's keys."""
    return dataclass(frozen=True)(cls)


def keys_of(cls: type) -> tuple[tuple[str, Key], ...]:
    """(field name, Key with its TOML name) for every key of a section, in
    declaration order; fields without ``key`` (derived values) are skipped."""
    out = []
    for f in fields(cls):
        spec = f.metadata.get("key")
        if isinstance(spec, Key):
            out.append((f.name, replace(spec, toml=spec.toml or f.name)))
    return tuple(out)


def key_named(cls: type, name: str) -> Key:
    """The declaration of field ``name`` of ``cls``."""
    return dict(keys_of(cls))[name]


def source_type(cls: type) -> str:
    """The ``type`` a ``[[sources]]`` table names to get dataclass ``cls``."""
    default = {f.name: f.default for f in fields(cls)}["type"]
    assert isinstance(default, str), cls
    return default
