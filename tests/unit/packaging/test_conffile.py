"""The Debian package's /etc/keyd/keyd.toml, made from examples/keyd.toml:
every setting of the example is there, commented out, except the directory
source on /etc/keyd/keys; keyd's own loader accepts the result."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from keyd.config import load_config

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "packaging"))

from conffile import commented_config  # noqa: E402

EXAMPLE = (ROOT / "examples/keyd.toml").read_text()


def test_only_the_local_key_directory_is_active() -> None:
    assert tomllib.loads(commented_config(EXAMPLE)) == {
        "sources": [
            {"type": "directory", "path": "/etc/keyd/keys", "pattern": "*.json", "name": "local-keys"}
        ]
    }


def test_every_setting_of_the_example_is_kept_commented() -> None:
    shipped = commented_config(EXAMPLE).splitlines()
    for line in EXAMPLE.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line in shipped or f"# {line}" in shipped, line


def test_keyd_loads_it_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(commented_config(EXAMPLE))
    config = load_config(path)
    assert config.database.url == "sqlite:////var/lib/keyd/keyd.db"
    assert [s.name for s in config.sources] == ["local-keys"]
