"""Plumbing for ``keyd.config``: read the TOML, apply ``KEYD_*`` overrides,
read credential files, and typed access that names file and key in every
error (docs/architecture.md rule 4).

Nothing here knows keyd's sections: the declarations in
``keyd.config.model`` do, and ``keyd.config.build`` reads them with this.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from keyd.config.spec import SCALAR_KINDS
from keyd.errors import ConfigError
from keyd.redact import Secret
from keyd.timeutil import DurationOutOfRange, parse_duration

log = logging.getLogger(__name__)

# Secrets never sit in the TOML (docs/architecture.md §7): these keys are refused with
# a pointer to the file / credential that replaces them.
FORBIDDEN_SECRET_KEYS = {
    "password": "password_file",
    "token": "token_file",
    "secret_id": "secret_id_file",
    "role_id": "role_id_file",
}
MAX_SECRET_BYTES = 64 * 1024  # a token or password; anything bigger is a wrong path

_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
DURATION_HINT = 'a number and ms, s, m, h, d or w, or several: "90s", "6h", "30d", "1h30m"'
_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


@dataclass
class Context:
    """Where values come from: the file (for messages and relative paths),
    the environment, and which keys an env var overrode."""

    file: str
    base_dir: Path
    env: Mapping[str, str]
    origins: dict[str, str] = field(default_factory=dict)  # dotted key -> env var
    warnings: list[str] = field(default_factory=list)

    def where(self, dotted: str) -> str:
        return self.origins.get(dotted) or (f"{self.file}: {dotted}" if dotted else self.file)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("%s", message)


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file, or a ``ConfigError`` that says what to do."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            str(path),
            "no such config file; point keyd at yours with "
            "--config PATH or the KEYD_CONFIG environment variable",
        ) from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"is not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POS_RE.search(message)
        if match:
            where = f"{path}: line {match.group(1)}, column {match.group(2)}"
            message = message[: match.start()]
        else:
            where = str(path)
        raise ConfigError(where, f"TOML syntax error: {message}") from None


def type_name(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` or ``""`` — operators' typos must not pass silently."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Table:
    """A TOML table at a dotted location with typed getters.

    Each getter returns ``None`` when the key is absent and raises
    ``ConfigError`` naming file and key (or the overriding env var) when
    the value has the wrong type or shape.
    """

    def __init__(self, ctx: Context, dotted: str, data: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.dotted = dotted
        self.data = data

    def key(self, key: str, index: int | None = None) -> str:
        dotted = f"{self.dotted}.{key}" if self.dotted else key
        return dotted if index is None else f"{dotted}[{index}]"

    def where(self, key: str | None = None, index: int | None = None) -> str:
        return self.ctx.where(self.dotted if key is None else self.key(key, index))

    def fail(self, key: str | None, problem: str, index: int | None = None) -> NoReturn:
        raise ConfigError(self.where(key, index), problem)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def check_keys(self, allowed: Iterable[str]) -> None:
        """Refuse secrets written inline and keys this table does not know."""
        allowed = list(allowed)
        for key in self.data:
            if key in FORBIDDEN_SECRET_KEYS and key not in allowed:
                self.fail(
                    key,
                    "secrets are never read from the config file; use "
                    f"{FORBIDDEN_SECRET_KEYS[key]} = PATH or a systemd credential "
                    "($CREDENTIALS_DIRECTORY), see docs/configuration.md",
                )
        unknown = [k for k in self.data if k not in allowed]
        known = f"known keys here: {', '.join(sorted(allowed))}"
        if len(unknown) == 1:
            self.fail(unknown[0], f"unknown key{suggest(unknown[0], allowed)}; {known}")
        if unknown:
            hints = ", ".join(f'"{k}"{suggest(k, allowed)}' for k in unknown)
            self.fail(None, f"unknown keys {hints}; {known}")

    def _typed(self, key: str, kind: type, index: int | None = None, value: object = None) -> Any:
        if index is None:
            value = self.data.get(key)
        if value is None:
            return None
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            self.fail(key, f"expected {_TYPE_NAMES[kind]}, got {type_name(value)}", index)
        return value

    def string(self, key: str, *, nonempty: bool = True) -> str | None:
        value: str | None = self._typed(key, str)
        if value is not None and nonempty and not value.strip():
            self.fail(key, "must not be empty")
        return value

    def need_string(self, key: str) -> str:
        value = self.string(key)
        if value is None:
            self.fail(key, "is required")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(key)
        if value is not None and value not in choices:
            options = ", ".join(f'"{c}"' for c in choices)
            self.fail(key, f'"{value}" is not one of {options}{suggest(value, choices)}')
        return value

    def integer(self, key: str, *, low: int | None = None, high: int | None = None) -> int | None:
        value: int | None = self._typed(key, int)
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            self.fail(key, f"{value} is out of range ({_range(low, high)})")
        return value

    def number(self, key: str, *, positive: bool = False) -> float | None:
        value: float | None = self._typed(key, float)
        if value is not None and positive and not value > 0:
            self.fail(key, f"{value} must be greater than 0")
        return value

    def boolean(self, key: str) -> bool | None:
        value: bool | None = self._typed(key, bool)
        return value

    def duration(
        self,
        key: str,
        *,
        positive: bool = True,
        low: timedelta | None = None,
        high: timedelta | None = None,
        index: int | None = None,
        value: object = None,
    ) -> timedelta | None:
        text: str | None = self._typed(key, str, index, value)
        if text is None:
            return None
        try:
            delta = parse_duration(text)
        except DurationOutOfRange as exc:
            self.fail(key, str(exc), index)
        except ValueError:
            self.fail(key, f'"{text}" is not a duration ({DURATION_HINT})', index)
        if positive and delta <= timedelta(0):
            self.fail(key, f'"{text}" must be longer than 0', index)
        if (low is not None and delta < low) or (high is not None and delta > high):
            self.fail(key, f'"{text}" is out of range ({_range(low, high)})', index)
        return delta

    def path(self, key: str, *, must_exist: bool = False) -> Path | None:
        """A path; relative paths are taken from the config file's directory."""
        text = self.string(key)
        if text is None:
            return None
        path = Path(text)
        path = path if path.is_absolute() else self.ctx.base_dir / path
        if must_exist and not path.exists():
            self.fail(key, f"{path} does not exist")
        if must_exist and not (path.is_file() or path.is_dir()):
            self.fail(key, f"{path} is not a regular file (a FIFO or device would block start-up)")
        return path

    def string_list(self, key: str, *, nonempty: bool = False) -> list[str] | None:
        items: list[Any] | None = self._typed(key, list)
        if items is None:
            return None
        if nonempty and not items:
            self.fail(key, "must list at least one value")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(key, f"expected a string, got {type_name(item)}", i)
            if not item.strip():
                self.fail(key, "must not be empty", i)
        return items

    def table(self, key: str) -> Table | None:
        data: dict[str, Any] | None = self._typed(key, dict)
        return None if data is None else Table(self.ctx, self.key(key), data)

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[sources]]``); absent = empty."""
        items: list[Any] | None = self._typed(key, list)
        out = []
        for i, item in enumerate(items or ()):
            if not isinstance(item, dict):
                self.fail(key, f"expected a table ([[{key}]]), got {type_name(item)}", i)
            out.append(Table(self.ctx, self.key(key, i), item))
        return out


def _range(low: object, high: object) -> str:
    if low is not None and high is not None:
        return f"allowed: {_fmt(low)} to {_fmt(high)}"
    return f"minimum {_fmt(low)}" if low is not None else f"maximum {_fmt(high)}"


def _fmt(value: object) -> str:
    if isinstance(value, timedelta):
        from keyd.timeutil import format_duration

        return format_duration(value)
    return str(value)


# -- environment overrides ---------------------------------------------------


def env_name(section: str, key: str) -> str:
    """``("alerts.email", "host")`` → ``KEYD_ALERTS_EMAIL_HOST``."""
    parts = [*(section.split(".") if section else []), key]
    return "KEYD_" + "_".join(p.upper() for p in parts)


def override_map(schema: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[str, str, str]]:
    """Env var name → (section, key, kind) for every scalar key in ``schema``."""
    out: dict[str, tuple[str, str, str]] = {}
    for section, keys in schema.items():
        for key, kind in keys.items():
            if kind in SCALAR_KINDS:
                name = env_name(section, key)
                assert name not in out, f"ambiguous override {name}"
                out[name] = (section, key, kind)
    return out


def apply_env_overrides(
    raw: dict[str, Any], ctx: Context, schema: Mapping[str, Mapping[str, str]], ignore: Iterable[str] = ()
) -> None:
    """Overwrite scalars in ``raw`` from ``KEYD_<SECTION>_<KEY>`` variables.

    Values are converted to the key's type here, so a bad value is reported
    against the variable; later checks name the variable too (``origins``).
    Unknown ``KEYD_*`` variables only warn: they may belong to a newer or
    older keyd, and refusing to start over one would be worse.
    """
    targets = override_map(schema)
    ignored = set(ignore)
    for name in sorted(ctx.env):
        if not name.startswith("KEYD_") or name in ignored:
            continue
        target = targets.get(name)
        if target is None:
            hint = suggest(name[5:], [t[5:] for t in targets]).replace('"', '"KEYD_', 1)
            ctx.warn(f"ignoring environment variable {name}: it overrides no config key{hint}")
            continue
        section, key, kind = target
        table = raw
        for part in section.split(".") if section else ():
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(
                    ctx.where(section), f"expected a table, got {type_name(nxt)} (needed for {name})"
                )
            table = nxt
        table[key] = convert_env(name, ctx.env[name], kind)
        ctx.origins[f"{section}.{key}" if section else key] = name


def convert_env(name: str, text: str, kind: str) -> object:
    if kind == "bool":
        value = _BOOL_WORDS.get(text.strip().lower())
        if value is None:
            raise ConfigError(name, f'"{text}" is not a boolean (use true or false)')
        return value
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            what = "an integer" if kind == "int" else "a number"
            raise ConfigError(name, f'"{text}" is not {what}') from None
    if kind == "duration":
        try:
            parse_duration(text)
        except DurationOutOfRange as exc:
            raise ConfigError(name, str(exc)) from None
        except ValueError:
            raise ConfigError(name, f'"{text}" is not a duration ({DURATION_HINT})') from None
    return text


# -- secrets -------------------------------------------------------------------


def read_secret_file(path: Path, where: str) -> Secret:
    """A secret file's content without its trailing newline. Errors name the
    key and the path, never the content."""
    try:
        data = _read_regular(path)
    except FileNotFoundError:
        raise ConfigError(where, f"secret file {path} does not exist") from None
    except _NotRegular:
        raise ConfigError(
            where,
            f"secret file {path} is not a regular file (a FIFO, "
            "device or directory would block or mislead start-up)",
        ) from None
    except OSError as exc:
        raise ConfigError(
            where, f"cannot read secret file {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(where, f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(where, f"secret file {path} is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(where, f"secret file {path} is empty")
    return Secret(text)


class _NotRegular(Exception):
    pass


def _read_regular(path: Path) -> bytes:
    """At most ``MAX_SECRET_BYTES + 1`` bytes of a regular file. Opened
    non-blocking and checked with fstat before reading, so a FIFO (or a
    device) given as a credential fails at once instead of hanging."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegular(str(path))
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_BYTES and (chunk := os.read(fd, MAX_SECRET_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def resolve_secret(table: Table, file_key: str, credential: str, env_var: str | None = None) -> Secret | None:
    """The secret for ``file_key``: the named file; else the systemd
    credential ``$CREDENTIALS_DIRECTORY/<credential>`` if present; else
    ``env_var`` (only the Vault token uses one); else ``None``."""
    path = table.path(file_key)
    if path is not None:
        return read_secret_file(path, table.where(file_key))
    cred_dir = table.ctx.env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / credential
        if cred.exists():
            return read_secret_file(cred, f"$CREDENTIALS_DIRECTORY/{credential}")
    if env_var and table.ctx.env.get(env_var):
        return Secret(table.ctx.env[env_var].rstrip("\r\n"))
    return None
