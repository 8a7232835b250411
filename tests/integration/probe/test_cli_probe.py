"""``keyd probe KEY_ID`` end to end: config file, migrated SQLite, the test
issuer; exit codes by outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyd.cli import main
from keyd.clock import SystemClock
from keyd.sources.keyfile import read_keyfile
from keyd.store.engine import make_engine
from keyd.store.migrate import upgrade
from tests.support.keyrows import add_key, key_row
from tests.support.keys import make_key_file

pytestmark = pytest.mark.issuer


@pytest.fixture
def setup(tmp_path: Path, issuer):
    keydir = tmp_path / "keys"
    db = tmp_path / "keyd.db"
    config = tmp_path / "keyd.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{db}"

[issuer]
url = "{issuer.url}"
timeout = "2s"

[[sources]]
type = "directory"
path = "{keydir}"
""")
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    yield engine, config, keydir, issuer
    engine.dispose()


def _add(engine, keydir, issuer, register=True):
    made = make_key_file(keydir, register_with=issuer if register else None)
    add_key(
        engine,
        read_keyfile(made.path),
        ref=str(made.path),
        source=f"directory:{keydir}",
        now=SystemClock().now(),
        status="rejected",
    )
    return made


def test_probe_ok_clears_a_rejection(setup, capsys):
    engine, config, keydir, issuer = setup
    made = _add(engine, keydir, issuer)
    code = main(["--config", str(config), "probe", made.key_id])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"key {made.key_id}" in out and ": ok" in out
    assert key_row(engine, made.key_id).status == "active"


def test_probe_rejected_exit_5_json(setup, capsys):
    engine, config, keydir, issuer = setup
    made = _add(engine, keydir, issuer, register=False)
    code = main(["--config", str(config), "probe", made.key_id, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 5 and doc["outcome"] == "rejected" and doc["schema"] == "keyd.probe/1"
    assert doc["at"].endswith("Z") and "+00:00" not in json.dumps(doc)
    assert doc["diagnosis"] == "revoked_or_unknown"


def test_probe_unavailable_exit_6(setup, capsys):
    engine, config, keydir, issuer = setup
    made = _add(engine, keydir, issuer)
    issuer.fail_mode = "503"
    assert main(["--config", str(config), "probe", made.key_id]) == 6


def test_unknown_key_exit_4(setup, capsys):
    _, config, _, _ = setup
    assert main(["--config", str(config), "probe", "nope"]) == 4
    assert "no key with id 'nope'" in capsys.readouterr().err
