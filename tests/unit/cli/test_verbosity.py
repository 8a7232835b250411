"""Interactive commands log warnings and errors only; ``--verbose`` gives
the configured level (INFO), ``--debug`` everything. (The daemon keeps its
configured level: tests/integration/runtime covers ``keyd run``'s logs.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o750)
    path = tmp_path / "keyd.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/keyd.db"\n\n'
        f'[[sources]]\ntype = "directory"\npath = "{keys}"\nname = "local"\n'
    )
    assert main(["--config", str(path), "db", "upgrade"]) == 0
    return path


@pytest.mark.parametrize(
    ("flags", "info_shown"), [([], False), (["--verbose"], True), (["-v"], True), (["--debug"], True)]
)
def test_scan_logs_info_only_when_asked(
    config: Path, capsys: pytest.CaptureFixture[str], flags: list[str], info_shown: bool
) -> None:
    capsys.readouterr()
    assert main([*flags, "--config", str(config), "scan"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("1 source, 0 keys")
    assert ("level=info" in captured.err) is info_shown, captured.err


def test_warnings_are_shown_without_verbose(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys").rmdir()  # a source that cannot be read is a warning
    capsys.readouterr()
    main(["--config", str(config), "scan"])
    err = capsys.readouterr().err
    assert "level=info" not in err and ("level=warning" in err or "level=error" in err), err
