"""The list of keys, derived from the declarations in ``keyd.config.model``.

``SCHEMA`` maps each section ("" = top level, "alerts.email" nested) to
its keys and their kinds; it drives the ``KEYD_<SECTION>_<KEY>``
overrides and the tests that keep docs/configuration.md and
examples/keyd.toml complete. ``SOURCE_KEYS`` lists each source type's
keys (``[[sources]]`` is an array, so it is not a section here).
"""

from __future__ import annotations

from keyd.config.model import Config
from keyd.config.spec import Key, keys_of, source_type


def declared(cls: type = Config, dotted: str = "") -> dict[str, dict[str, Key]]:
    """Section → TOML key → declaration, for ``cls`` and every sub-section."""
    out: dict[str, dict[str, Key]] = {dotted: {}}
    for _, spec in keys_of(cls):
        out[dotted][spec.toml] = spec
        if spec.kind == "table" and spec.section is not None:
            inner = f"{dotted}.{spec.toml}" if dotted else spec.toml
            out.update(declared(spec.section, inner))
    return out


def _source_keys() -> dict[str, dict[str, Key]]:
    variants = dict(keys_of(Config))["sources"].variants
    return {source_type(cls): {spec.toml: spec for _, spec in keys_of(cls)} for cls in variants}


DECLARED = declared()
SCHEMA: dict[str, dict[str, str]] = {
    section: {name: ("path" if spec.kind == "secret" else spec.kind) for name, spec in keys.items()}
    for section, keys in DECLARED.items()
}
SOURCE_DECLARED = _source_keys()
SOURCE_KEYS: dict[str, tuple[str, ...]] = {kind: tuple(keys) for kind, keys in SOURCE_DECLARED.items()}
