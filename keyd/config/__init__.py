"""Configuration: TOML + ``KEYD_*`` env + credential files → one frozen,
validated ``Config`` (docs/architecture.md rule 4, §7).

Errors name the file and the key: ``keyd.toml: alerts.thresholds[2]: "7x"
is not a duration``. Secrets are read from files or systemd credentials
and held as ``Secret``; never from the TOML itself or the command line.

The package, lowest first:

- ``spec``   — ``key(...)``, the declaration of one key, and ``@section``;
- ``read``   — the TOML, env overrides, secret files, typed ``Table`` access;
- ``checks`` — checks of single values a declaration names (URLs, templates…);
- ``model``  — the dataclasses: every key declared ONCE, as its field;
- ``schema`` — ``SCHEMA`` / ``SOURCE_KEYS`` derived from the model;
- ``build``  — ``load_config`` and the generic section builder, plus the
  finish hooks of sections whose keys depend on each other.

Adding a key (one place, plus the reference and the example)
-------------------------------------------------------------
1. In ``model.py``, add a field to the section's dataclass::

       retries: int = key("int", default=3, low=0, high=10,
                          doc="attempts before giving up")

   The kind (``spec.KINDS``) decides how it is read and whether a
   ``KEYD_<SECTION>_<KEY>`` variable overrides it; ``low``/``high``,
   ``positive``, ``choices``, ``required``, ``must_exist`` and ``nonempty``
   are checked for you with the usual messages. A check beyond those goes
   in ``checks.py`` and is named with ``check=``. A key whose TOML name
   differs from the field names it with ``toml=`` (``from`` → ``from_addr``).
2. A secret is ``key("secret", toml="x_file", credential="name", default=None,
   doc=...)``: the section's finish hook in ``build.py`` resolves it with
   ``secret(t, Cls, "x")`` (file, then $CREDENTIALS_DIRECTORY/name).
3. Document it as a row ``| `section.key` | type | default | meaning |`` in
   docs/configuration.md and show it (commented out if optional) in
   examples/keyd.toml; tests/unit/test_config.py fails until both match
   the declarations.

Adding a section
----------------
1. In ``model.py``, a ``@section`` dataclass with its ``key`` fields, and a
   field in the parent: ``rotation: RotationConfig | None = key("table",
   default=None, section=RotationConfig, doc=...)`` (``default_factory=`` for
   a section that is always present with defaults). Nested sections work the
   same way (``[alerts.email]``).
2. If keys of the section depend on each other, or the section on another
   one, add a finish hook ``(table, kwargs) -> None`` to ``build.FINISH``;
   cross-section rules go in ``_finish_config``.
3. A new ``[[sources]]`` type is a ``@section`` dataclass with a ``type``
   key whose default is the type's name, added to ``SOURCE_VARIANTS``.
4. Give the section its heading and table in docs/configuration.md and its
   block in examples/keyd.toml.
"""

from keyd.config.build import ENV_NOT_OVERRIDES, load_config
from keyd.config.model import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_DB_URL,
    AlertsConfig,
    Config,
    DaemonConfig,
    DatabaseConfig,
    DirectorySourceConfig,
    EmailConfig,
    HttpConfig,
    IssuerConfig,
    LogConfig,
    RotationConfig,
    SourceConfig,
    TokensConfig,
    VaultConfig,
    VaultSourceConfig,
    WebhookConfig,
    ZitadelSourceConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DB_URL",
    "ENV_NOT_OVERRIDES",
    "AlertsConfig",
    "Config",
    "DaemonConfig",
    "DatabaseConfig",
    "DirectorySourceConfig",
    "EmailConfig",
    "HttpConfig",
    "IssuerConfig",
    "LogConfig",
    "RotationConfig",
    "SourceConfig",
    "TokensConfig",
    "VaultConfig",
    "VaultSourceConfig",
    "WebhookConfig",
    "ZitadelSourceConfig",
    "load_config",
]
