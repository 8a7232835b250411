"""Config input that used to escape as a raw Python error: durations past
``timedelta``'s range (TOML and ``KEYD_*``), a 5,000-character time zone,
a FIFO as a secret file; compound durations; the warning for an HTTP
listener off loopback (shown by ``keyd config check`` and logged by the
daemon, tests/integration/runtime/test_config_input_daemon.py)."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from keyd.config import load_config
from keyd.errors import EXIT_CONFIG, ConfigError
from keyd.timeutil import parse_duration

ISSUER = '[issuer]\nurl = "https://acme.zitadel.cloud"\n'
TOKEN = "0123456789abcdef0123456789abcdef"


def _error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    path = tmp_path / "keyd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    assert info.value.exit_code == EXIT_CONFIG
    return info.value


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2w3d", timedelta(days=17)),
        ("1m30s500ms", timedelta(seconds=90.5)),
        ("1h 30m", timedelta(minutes=90)),
        ("36525d", timedelta(days=36525)),
    ],
)
def test_compound_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["1h30", "h30m", "1h-30m", "1e9d", "30m1", "", "1 h 30 x"])
def test_malformed_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_compound_durations_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(ISSUER + 'probe_interval = "1h30m"\n[alerts]\nthresholds = ["1d12h", "6h"]\n')
    config = load_config(path, {})
    assert config.issuer is not None and config.issuer.probe_interval == timedelta(minutes=90)
    assert config.alerts.thresholds == (timedelta(hours=36), timedelta(hours=6))


@pytest.mark.parametrize("value", ["1000000000d", "999999999999w", "100000000000000000000s"])
def test_a_duration_past_the_range_is_a_config_error(tmp_path: Path, value: str) -> None:
    err = _error(tmp_path, ISSUER + f'probe_interval = "{value}"\n')
    assert err.where.endswith("keyd.toml: issuer.probe_interval")
    assert err.problem == f"'{value}' is longer than 36525 days"
    err = _error(tmp_path, f'[alerts]\nthresholds = ["7d", "{value}"]\n')
    assert err.where.endswith("keyd.toml: alerts.thresholds[1]")


def test_a_duration_past_the_range_in_the_environment(tmp_path: Path) -> None:
    err = _error(tmp_path, ISSUER, {"KEYD_ISSUER_PROBE_INTERVAL": "1000000000d"})
    assert err.where == "KEYD_ISSUER_PROBE_INTERVAL"
    assert "longer than 36525 days" in err.problem


def test_a_5000_character_timezone(tmp_path: Path) -> None:
    err = _error(tmp_path, f'timezone = "{"A" * 5000}"\n')
    assert err.where.endswith("keyd.toml: timezone")
    assert (
        err.problem == "'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'… (5000 characters) is not a "
        'known time zone (e.g. "Europe/Zurich")'
    )
    err = _error(tmp_path, 'timezone = "' + "Europe/" * 30 + 'Zurich"\n')  # long, but under 255
    assert "is not a known time zone" in err.problem


def test_a_fifo_as_a_secret_file_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "smtp-password"
    os.mkfifo(fifo)
    text = (
        '[alerts.email]\nhost = "smtp.example"\nfrom = "keyd@example.org"\n'
        f'to = ["ops@example.org"]\nusername = "keyd"\npassword_file = "{fifo}"\n'
    )
    result: list[ConfigError] = []
    worker = threading.Thread(target=lambda: result.append(_error(tmp_path, text)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # unblock the reader so the test ends, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO as a secret file blocked")
    (err,) = result
    assert err.where.endswith("alerts.email.password_file")
    assert "is not a regular file" in err.problem


def test_a_fifo_as_a_systemd_credential_fails_at_once(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    os.mkfifo(creds / "http-auth-token")
    err = _error(tmp_path, '[http]\nlisten = "0.0.0.0:9464"\n', {"CREDENTIALS_DIRECTORY": str(creds)})
    assert err.where == "$CREDENTIALS_DIRECTORY/http-auth-token"
    assert "is not a regular file" in err.problem


def test_a_fifo_as_a_ca_bundle(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ca.pem")
    err = _error(tmp_path, ISSUER + f'ca_bundle = "{tmp_path / "ca.pem"}"\n')
    assert err.where.endswith("issuer.ca_bundle") and "not a regular file" in err.problem


@pytest.mark.parametrize(
    "listen, warned",
    [("127.0.0.1:9464", False), ("[::1]:9464", False), ("0.0.0.0:9464", True), ("10.1.2.3:9464", True)],
)
def test_listen_off_loopback_is_warned_about(tmp_path: Path, listen: str, warned: bool) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    path = tmp_path / "keyd.toml"
    path.write_text(f'[http]\nlisten = "{listen}"\nauth_token_file = "{token}"\n')
    warnings = load_config(path, {}).warnings
    assert bool(warnings) == warned
    if warned:
        (text,) = warnings
        assert text.startswith(f'{path}: http.listen: "{listen}" is not a loopback address')
        assert "/healthz and /readyz answer anyone" in text


@pytest.mark.parametrize(
    "path",
    ["zitadel/../{principal}", "../{key_id}", "a//{principal}", "a/./{key_id}", "tokens/{principal} x"],
)
def test_a_token_path_that_is_not_plain_is_refused_at_load(tmp_path: Path, path: str) -> None:
    text = ISSUER + f'[vault]\naddr = "https://vault.example"\n[tokens]\npath = "{path}"\n'
    err = _error(tmp_path, text, {"VAULT_TOKEN": "hvs.x"})
    assert err.where.endswith("keyd.toml: tokens.path")
    assert "must be a plain relative path" in err.problem


@pytest.mark.parametrize("url", ["mysql://keyd@db/keyd", "mssql+pyodbc://db/keyd"])
def test_an_unsupported_database_is_a_config_error(tmp_path: Path, url: str) -> None:
    err = _error(tmp_path, f'[database]\nurl = "{url}"\n')
    assert err.where.endswith("keyd.toml: database.url")
    assert "is not a database keyd supports" in err.problem
