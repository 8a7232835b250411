"""[http]: the access token and the rule that an address off loopback
needs one (refused at config load, naming file and key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.config import Config, load_config
from keyd.errors import ConfigError

TOKEN = "0123456789abcdef0123456789abcdef"


def load(tmp_path: Path, http: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "keyd.toml"
    path.write_text(f"[http]\n{http}")
    return load_config(path, env or {})


def token_file(tmp_path: Path, text: str = TOKEN + "\n") -> Path:
    path = tmp_path / "http-token"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:9464", "127.0.0.2:1"])
def test_loopback_needs_no_token(tmp_path: Path, listen: str) -> None:
    config = load(tmp_path, f'listen = "{listen}"\n')
    assert config.http.auth_token is None and config.http.metrics_public is False


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "10.1.2.3:9464", "keyd.example.org:9464"])
def test_off_loopback_without_token_is_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'listen = "{listen}"\n')
    text = str(info.value)
    assert "keyd.toml: http.listen" in text and "auth_token_file" in text


def test_token_file_opens_any_address(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    config = load(tmp_path, f'listen = "0.0.0.0:9464"\nauth_token_file = "{path}"\nmetrics_public = true\n')
    assert config.http.auth_token is not None
    assert config.http.auth_token.reveal() == TOKEN  # newline stripped
    assert TOKEN not in repr(config)
    assert config.http.metrics_public is True


def test_token_from_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http-auth-token").write_text(TOKEN)
    config = load(tmp_path, 'listen = "0.0.0.0:9464"\n', {"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.http.auth_token is not None and config.http.auth_token.reveal() == TOKEN


def test_short_token_is_refused(tmp_path: Path) -> None:
    path = token_file(tmp_path, "tiny-Xq7\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'listen = "127.0.0.1:9464"\nauth_token_file = "{path}"\n')
    assert "http.auth_token_file" in str(info.value) and "tiny-Xq7" not in str(info.value)


def test_missing_token_file_names_key_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'listen = "127.0.0.1:9464"\nauth_token_file = "{tmp_path}/nope"\n')
    assert "http.auth_token_file" in str(info.value) and "nope" in str(info.value)
