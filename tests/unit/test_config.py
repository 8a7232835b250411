"""keyd.config: TOML + env + credentials → one validated Config; every
error names file and key (docs/architecture.md rule 4, §7)."""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from keyd.config import Config, DirectorySourceConfig, VaultSourceConfig, load_config
from keyd.config.schema import SCHEMA, SOURCE_KEYS
from keyd.errors import EXIT_CONFIG, ConfigError
from keyd.redact import Secret

ROOT = Path(__file__).resolve().parents[2]
VAULT = '[vault]\naddr = "https://vault.example:8200"\n'
EMAIL = '[alerts.email]\nhost = "smtp.example"\nfrom = "keyd@example.org"\nto = ["ops@example.org"]\n'
ISSUER = '[issuer]\nurl = "https://acme.zitadel.cloud"\n'
TOKEN_ENV = {"VAULT_TOKEN": "hvs.env-token"}


def write(tmp_path: Path, text: str, name: str = "keyd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env if env is not None else {})


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value


# -- what a good file gives ---------------------------------------------------


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.issuer is None  # inventory-only setups are valid
    assert config.timezone is UTC and config.timezone_name == "UTC"
    assert config.database.url == "sqlite:////var/lib/keyd/keyd.db"
    assert config.alerts.thresholds[0] == timedelta(days=30)
    assert config.path == tmp_path / "keyd.toml"
    assert config.warnings == ()


def test_issuer_keeps_url_exactly_and_adds_openid_first(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[issuer]\nurl = "https://acme.zitadel.cloud/"\n'
        'scopes = ["urn:zitadel:iam:org:project:id:zitadel:aud", "profile", "profile"]\n'
        'probe_interval = "90m"\nconcurrency = 2\nrate_limit = 5\n',
    )
    assert config.issuer is not None
    assert config.issuer.url == "https://acme.zitadel.cloud/"  # docs/zitadel.md §3: aud is exact
    assert config.issuer.scopes == ("openid", "urn:zitadel:iam:org:project:id:zitadel:aud", "profile")
    assert config.issuer.probe_interval == timedelta(minutes=90)
    assert config.issuer.concurrency == 2 and config.issuer.rate_limit == 5.0


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.3.4.5", "http://[::1]:80", "http://localhost:8080/"]
)
def test_http_issuer_allowed_on_loopback(tmp_path: Path, url: str) -> None:
    config = load(tmp_path, f'[issuer]\nurl = "{url}"\n')
    assert config.issuer is not None and config.issuer.url == url


def test_sources_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[[sources]]\ntype = "directory"\npath = "keys"\n'
        '[[sources]]\ntype = "vault"\nprefix = "zitadel/keys"\n' + VAULT,
        TOKEN_ENV,
    )
    directory, vault = config.sources
    assert directory == DirectorySourceConfig(name=f"directory:{tmp_path / 'keys'}", path=tmp_path / "keys")
    assert vault == VaultSourceConfig(name="vault:secret/zitadel/keys", prefix="zitadel/keys")


def test_thresholds_deduplicated_and_sorted_descending(tmp_path: Path) -> None:
    config = load(tmp_path, '[alerts]\nthresholds = ["1d", "30d", "24h", "7d"]\n')
    assert config.alerts.thresholds == (timedelta(days=30), timedelta(days=7), timedelta(days=1))


def test_email_defaults_port_from_security_and_routes(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        EMAIL + 'security = "ssl"\n[alerts.email.routes]\n'
        '"svc-1" = ["a@example.org"]\n"dir:x" = ["b@example.org", "c@example.org"]\n',
    )
    email = config.alerts.email
    assert email is not None and email.port == 465 and email.password is None
    assert email.from_addr == "keyd@example.org" and email.to == ("ops@example.org",)
    assert email.routes == (("svc-1", ("a@example.org",)), ("dir:x", ("b@example.org", "c@example.org")))


def test_tokens_and_log(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        ISSUER + VAULT + '[tokens]\npath = "t/{principal}/{key_id}"\n'
        'principals = ["svc-1"]\n[log]\nformat = "json"\nlevel = "debug"\n',
        TOKEN_ENV,
    )
    assert config.tokens is not None and config.tokens.path == "t/{principal}/{key_id}"
    assert config.tokens.principals == ("svc-1",)
    assert config.log.format == "json" and config.log.level == "DEBUG"


# -- every validation error names file and key ------------------------------

ERRORS = [
    # (toml, env, where after "<file>: ", problem fragment)
    ('[alerts]\nthresholds = ["30d", "7d", "7x"]\n', {}, "alerts.thresholds[2]", '"7x" is not a duration'),
    ('[alerts]\nthresholds = ["30d", "0s"]\n', {}, "alerts.thresholds[1]", "longer than 0"),
    ("[alerts]\nthresholds = []\n", {}, "alerts.thresholds", "at least one"),
    ('timezone = "Mars/Olympus"\n', {}, "timezone", "not a known time zone"),
    ("timezone = 5\n", {}, "timezone", "expected a string, got an integer"),
    ('[issuer]\nurl = "http://acme.zitadel.cloud"\n', {}, "issuer.url", "https"),
    ('[issuer]\nurl = "https://acme.zitadel.cloud?x=1"\n', {}, "issuer.url", "query"),
    ('[issuer]\nurl = "https://acme.zitadel.cloud#f"\n', {}, "issuer.url", "fragment"),
    ('[issuer]\nurl = "ftp://acme"\n', {}, "issuer.url", "http(s)"),
    ('[issuer]\nscopes = ["openid"]\n', {}, "issuer.url", "is required"),
    (ISSUER + 'scopes = ["openid profile"]\n', {}, "issuer.scopes[0]", "spaces"),
    (ISSUER + 'scopes = "openid"\n', {}, "issuer.scopes", "expected a list, got a string"),
    (ISSUER + 'ca_bundle = "nope.pem"\n', {}, "issuer.ca_bundle", "does not exist"),
    (ISSUER + 'assertion_lifetime = "2h"\n', {}, "issuer.assertion_lifetime", "out of range"),
    (ISSUER + "concurrency = 0\n", {}, "issuer.concurrency", "out of range"),
    (ISSUER + 'concurrency = "8"\n', {}, "issuer.concurrency", "expected an integer"),
    (ISSUER + "concurrency = true\n", {}, "issuer.concurrency", "got a boolean"),
    (ISSUER + "rate_limit = 0\n", {}, "issuer.rate_limit", "greater than 0"),
    (ISSUER + 'probe_interval = "6 hours"\n', {}, "issuer.probe_interval", "not a duration"),
    (ISSUER + 'prob_interval = "6h"\n', {}, "issuer.prob_interval", 'did you mean "probe_interval"'),
    ("[alert]\ndigest = true\n", {}, "alert", 'did you mean "alerts"'),
    (
        '[[sources]]\ntype = "directory"\npath = "k"\n[[sources]]\ntype = "s3"\n',
        {},
        "sources[1].type",
        'unknown source type "s3"',
    ),
    ('[[sources]]\ntype = "directory"\n', {}, "sources[0].path", "required"),
    ('[[sources]]\ntype = "directory"\npath = "k"\nprefix = "x"\n', {}, "sources[0].prefix", "unknown key"),
    (
        '[[sources]]\ntype = "directory"\npath = "k"\n[[sources]]\ntype = "directory"\npath = "k"\n',
        {},
        "sources[1]",
        "already used by sources[0]",
    ),
    ('[[sources]]\ntype = "vault"\n', {}, "sources[0]", "needs a [vault] section"),
    ("sources = 3\n", {}, "sources", "expected a list"),
    (ISSUER + '[tokens]\npath = "x/{principal}"\n', {}, "tokens", "needs a [vault] section"),
    (VAULT + '[tokens]\npath = "x/{principal}"\n', TOKEN_ENV, "tokens", "needs an [issuer]"),
    (
        ISSUER + VAULT + '[tokens]\npath = "x/{user}"\n',
        TOKEN_ENV,
        "tokens.path",
        'unknown placeholder "{user}"',
    ),
    (
        ISSUER + VAULT + '[tokens]\npath = "x/{principal!r}"\n',
        TOKEN_ENV,
        "tokens.path",
        "unknown placeholder",
    ),
    (ISSUER + VAULT + '[tokens]\npath = "x/{principal"\n', TOKEN_ENV, "tokens.path", "not a valid template"),
    (ISSUER + VAULT + '[tokens]\npath = "x/all"\n', TOKEN_ENV, "tokens.path", "no placeholder"),
    (
        '[[sources]]\ntype = "directory"\npath = "k"\nname = "local"\n'
        + ISSUER
        + VAULT
        + '[tokens]\nsources = ["local", "/etc/keyd/keys/*.json", "locl"]\n',
        TOKEN_ENV,
        "tokens.sources[2]",
        '"locl" is not the name of a source (did you mean "local"?)',
    ),
    (VAULT + 'auth = "kerberos"\n', TOKEN_ENV, "vault.auth", '"kerberos" is not one of'),
    (VAULT, {}, "vault.token_file", "no Vault token"),
    (VAULT + 'auth = "approle"\n', {}, "vault.role_id_file", "no AppRole role_id"),
    (VAULT + 'token_file = "missing-token"\n', {}, "vault.token_file", "does not exist"),
    (VAULT + 'auth = "approle"\ntoken_file = "t"\n', {}, "vault.token_file", "not used with"),
    (VAULT + 'token = "hvs.inline-secret"\n', {}, "vault.token", "token_file"),
    (VAULT + 'secret_id = "inline-secret"\n', {}, "vault.secret_id", "secret_id_file"),
    (EMAIL + 'password = "inline-secret"\n', {}, "alerts.email.password", "password_file"),
    (EMAIL + 'username = "keyd"\n', {}, "alerts.email.password_file", "no password"),
    (
        '[alerts.email]\nhost = "smtp"\nfrom = "keyd@example.org"\nto = []\n',
        {},
        "alerts.email.to",
        "at least one",
    ),
    (
        '[alerts.email]\nhost = "smtp"\nfrom = "keyd@example.org"\nto = ["ops"]\n',
        {},
        "alerts.email.to[0]",
        '"ops" is not an e-mail address',
    ),
    ('[alerts.email]\nhost = "smtp"\nto = ["a@b.c"]\n', {}, "alerts.email.from", "required"),
    (EMAIL + 'security = "startls"\n', {}, "alerts.email.security", 'did you mean "starttls"'),
    (EMAIL + "port = 70000\n", {}, "alerts.email.port", "out of range"),
    (EMAIL + 'too = ["x@y.z"]\n', {}, "alerts.email.too", 'did you mean "to"'),
    (EMAIL + '[alerts.email.routes]\nsvc = "a@b.c"\n', {}, "alerts.email.routes.svc", "expected a list"),
    ('[alerts.webhook]\nurl = "http://hooks.example.org"\n', {}, "alerts.webhook.url", "https"),
    ('[http]\nlisten = "9464"\n', {}, "http.listen", "host:port"),
    ('[http]\nlisten = "127.0.0.1:99999"\n', {}, "http.listen", "out of range"),
    ('[log]\nformat = "xml"\n', {}, "log.format", "is not one of"),
    ('[log]\nlevel = "loud"\n', {}, "log.level", "not a log level"),
    ('[database]\nurl = "/var/lib/keyd.db"\n', {}, "database.url", "not a database URL"),
    (
        '[database]\nurl = "postgresql://keyd:hunter2@db/keyd"\n',
        {},
        "database.url",
        "must not contain a password",
    ),
    ("database = 1\n", {}, "database", "expected a table"),
]


@pytest.mark.parametrize(
    ("text", "env", "key", "problem"), ERRORS, ids=[f"{i}-{case[2]}" for i, case in enumerate(ERRORS)]
)
def test_errors_name_file_and_key(
    tmp_path: Path, text: str, env: dict[str, str], key: str, problem: str
) -> None:
    err = error(tmp_path, text, env)
    path = tmp_path / "keyd.toml"
    assert err.where == f"{path}: {key}"
    assert problem in err.problem
    assert str(err).startswith(f"{path}: {key}: ")
    assert err.exit_code == EXIT_CONFIG
    assert "inline-secret" not in str(err) and "hunter2" not in str(err)


def test_relative_config_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, '[alerts]\nthresholds = ["30d", "7d", "7x"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(Path("keyd.toml"), {})
    assert str(info.value) == (
        'keyd.toml: alerts.thresholds[2]: "7x" is not a duration '
        '(a number and ms, s, m, h, d or w, or several: "90s", "6h", "30d", "1h30m")'
    )


def test_several_unknown_keys_are_all_named(tmp_path: Path) -> None:
    err = error(tmp_path, ISSUER + "timout = 1\ncuncurrency = 2\n")
    assert err.where.endswith(": issuer")
    assert '"timout" (did you mean "timeout"?)' in err.problem
    assert '"cuncurrency" (did you mean "concurrency"?)' in err.problem


def test_missing_file_says_how_to_point_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", {})
    assert info.value.where == str(tmp_path / "nope.toml")
    assert "--config" in info.value.problem and "KEYD_CONFIG" in info.value.problem


def test_syntax_error_names_line(tmp_path: Path) -> None:
    err = error(tmp_path, '[issuer]\nurl = "https://x"\nscopes = [openid]\n')
    assert err.where == f"{tmp_path / 'keyd.toml'}: line 3, column 11"
    assert "TOML syntax error" in err.problem


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, {})


# -- environment overrides ------------------------------------------------------


def test_env_overrides_scalars_with_types(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        ISSUER + "[alerts]\ndigest = false\n",
        {
            "KEYD_TIMEZONE": "Europe/Zurich",
            "KEYD_DATABASE_URL": "postgresql+psycopg://keyd@db/keyd",
            "KEYD_ISSUER_URL": "https://other.zitadel.cloud",
            "KEYD_ISSUER_PROBE_INTERVAL": "1h",
            "KEYD_ISSUER_CONCURRENCY": "3",
            "KEYD_ISSUER_RATE_LIMIT": "2.5",
            "KEYD_ALERTS_DIGEST": "true",
            "KEYD_HTTP_LISTEN": "[::1]:9464",
            "KEYD_CONFIG": "/elsewhere.toml",  # names the file; not an override
        },
    )
    assert config.timezone_name == "Europe/Zurich"
    assert config.database.url == "postgresql+psycopg://keyd@db/keyd"
    assert config.issuer is not None and config.issuer.url == "https://other.zitadel.cloud"
    assert config.issuer.probe_interval == timedelta(hours=1)
    assert config.issuer.concurrency == 3 and config.issuer.rate_limit == 2.5
    assert config.alerts.digest is True
    assert config.http.listen == "[::1]:9464"
    assert config.warnings == ()


def test_env_can_create_a_section(tmp_path: Path) -> None:
    config = load(tmp_path, "", {"KEYD_ISSUER_URL": "https://acme.zitadel.cloud"})
    assert config.issuer is not None and config.issuer.url == "https://acme.zitadel.cloud"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("KEYD_ALERTS_DIGEST", "maybe", "not a boolean"),
        ("KEYD_ISSUER_CONCURRENCY", "many", "not an integer"),
        ("KEYD_ISSUER_RATE_LIMIT", "fast", "not a number"),
        ("KEYD_ISSUER_TIMEOUT", "10 seconds", "not a duration"),
        ("KEYD_ISSUER_URL", "http://acme.zitadel.cloud", "https"),  # checked later, still named
        ("KEYD_ISSUER_CONCURRENCY", "0", "out of range"),
    ],
)
def test_env_errors_name_the_variable(tmp_path: Path, name: str, value: str, problem: str) -> None:
    err = error(tmp_path, ISSUER, {name: value})
    assert err.where == name
    assert problem in err.problem


def test_unknown_env_vars_warn_and_suggest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load(tmp_path, "", {"KEYD_ISSUER_CONCURENCY": "3", "KEYD_ALERTS_THRESHOLDS": "1d", "OTHER": "x"})
    assert len(config.warnings) == 2
    assert any('did you mean "KEYD_ISSUER_CONCURRENCY"' in w for w in config.warnings)
    assert any("KEYD_ALERTS_THRESHOLDS" in w for w in config.warnings)  # lists: not scalars
    assert "KEYD_ISSUER_CONCURENCY" in caplog.text


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYD_HTTP_LISTEN", "127.0.0.1:1234")
    config = load_config(write(tmp_path, ""))
    assert config.http.listen == "127.0.0.1:1234"


# -- secrets ------------------------------------------------------------------------


def creds(tmp_path: Path, **values: str) -> dict[str, str]:
    directory = tmp_path / "credentials"
    directory.mkdir(exist_ok=True)
    for name, value in values.items():
        (directory / name.replace("_", "-")).write_text(value)
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def test_secret_resolution_order(tmp_path: Path) -> None:
    # explicit file beats the credential, which beats VAULT_TOKEN
    (tmp_path / "token").write_text("from-file\n")
    env = {**creds(tmp_path, vault_token="from-credential\r\n"), "VAULT_TOKEN": "from-env"}
    config = load(tmp_path, VAULT + 'token_file = "token"\n', env)
    assert config.vault is not None and config.vault.token == Secret("from-file")
    config = load(tmp_path, VAULT, env)
    assert config.vault is not None and config.vault.token == Secret("from-credential")
    config = load(tmp_path, VAULT, {"VAULT_TOKEN": "from-env", "CREDENTIALS_DIRECTORY": "/nope"})
    assert config.vault is not None and config.vault.token == Secret("from-env")


def test_approle_and_smtp_from_credentials_never_printed(tmp_path: Path) -> None:
    env = creds(
        tmp_path,
        vault_role_id="ROLE-ID-MARKER",
        vault_secret_id="SECRET-ID-MARKER",
        smtp_password="PASSWORD-MARKER\n",
    )
    config = load(tmp_path, VAULT + 'auth = "approle"\n' + EMAIL + 'username = "keyd"\n', env)
    assert config.vault is not None and config.alerts.email is not None
    assert config.vault.role_id == Secret("ROLE-ID-MARKER")
    assert config.vault.secret_id == Secret("SECRET-ID-MARKER")
    assert config.alerts.email.password == Secret("PASSWORD-MARKER")
    for text in (repr(config), str(config)):
        assert "MARKER" not in text


def test_vault_token_env_ignored_for_approle_and_smtp(tmp_path: Path) -> None:
    err = error(tmp_path, VAULT + 'auth = "approle"\n', {"VAULT_TOKEN": "x"})
    assert "role_id" in err.problem


def test_smtp_credential_unused_without_username(tmp_path: Path) -> None:
    config = load(tmp_path, EMAIL, creds(tmp_path, smtp_password="pw"))
    assert config.alerts.email is not None and config.alerts.email.password is None


@pytest.mark.parametrize(
    ("content", "problem"), [(b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "not UTF-8")]
)
def test_bad_secret_files(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "token").write_bytes(content)
    err = error(tmp_path, VAULT + 'token_file = "token"\n')
    assert err.where.endswith("vault.token_file")
    assert problem in err.problem and str(tmp_path / "token") in err.problem


def test_unreadable_credential_is_named_without_content(tmp_path: Path) -> None:
    env = creds(tmp_path)
    (Path(env["CREDENTIALS_DIRECTORY"]) / "vault-token").mkdir()  # exists, cannot be read
    err = error(tmp_path, VAULT, env)
    assert err.where == "$CREDENTIALS_DIRECTORY/vault-token"


# -- the shipped example and the reference stay complete -----------------------


def example_env(tmp_path: Path) -> dict[str, str]:
    return creds(
        tmp_path, vault_role_id="role", vault_secret_id="secret", smtp_password="pw", zitadel_api_key="{}"
    )


def test_example_loads_cleanly(tmp_path: Path) -> None:
    config = load_config(ROOT / "examples" / "keyd.toml", example_env(tmp_path))
    assert config.warnings == ()
    assert config.issuer is not None and config.vault is not None and config.tokens is not None
    assert config.alerts.email is not None and config.alerts.email.password == Secret("pw")
    assert config.alerts.webhook is not None and config.http.listen is not None
    assert [s.type for s in config.sources] == ["directory", "vault"]
    assert config.rotation is not None
    assert config.rotation.credential == tmp_path / "credentials" / "zitadel-api-key"


def all_keys() -> list[tuple[str, str]]:
    keys = [(section, key) for section, keys in SCHEMA.items() for key in keys]
    keys += [("sources", key) for kind in SOURCE_KEYS.values() for key in kind]
    return sorted(set(keys))


def example_names() -> tuple[set[str], set[str]]:
    """(dotted keys, section headers) the example shows, commented out or not."""
    section, named, sections = "", set(), set()
    for line in (ROOT / "examples" / "keyd.toml").read_text().splitlines():
        if header := re.match(r"^#? ?\[+([a-z.]+)\]+", line):
            section = header.group(1)
            sections.add(section)
        elif found := re.match(r"^#? ?(\w+) = ", line):
            named.add(f"{section}.{found.group(1)}" if section else found.group(1))
    return named, sections


def test_example_shows_every_key() -> None:
    """Each declared key under its own section: ``webhook.url`` is not
    shown by ``issuer.url``."""
    named, sections = example_names()
    assert sorted(dotted_keys() - named - sections) == []


def test_reference_documents_every_key() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for section, key in all_keys():
        if section == "" and SCHEMA[""][key] in ("table", "tables"):
            assert f"[{key}]" in text, key  # a section: documented under its heading
            continue
        dotted = f"{section}.{key}" if section else key
        assert f"| `{dotted}` |" in text, dotted


def dotted_keys() -> set[str]:
    return {f"{section}.{key}" if section else key for section, key in all_keys()}


def test_reference_names_only_declared_keys() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \|", text, re.M)
    assert len(rows) > 50
    assert sorted(set(rows) - dotted_keys()) == []


def test_example_names_only_declared_keys() -> None:
    section, named = "", []
    for line in (ROOT / "examples" / "keyd.toml").read_text().splitlines():
        if header := re.match(r"^\[+([a-z.]+)\]+", line):
            section = header.group(1)
        elif section != "alerts.email.routes" and (found := re.match(r"^#? ?(\w+) = ", line)):
            named.append(f"{section}.{found.group(1)}" if section else found.group(1))
    assert len(named) > 50
    assert sorted(set(named) - dotted_keys()) == []


def test_secret_looking_env_var_is_not_an_override_and_not_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load(tmp_path, "", {"KEYD_VAULT_TOKEN": "hvs.ENV-SECRET-MARKER"})
    assert config.vault is None
    assert "KEYD_VAULT_TOKEN" in config.warnings[0]
    assert "ENV-SECRET-MARKER" not in " ".join(config.warnings) + caplog.text


def test_daemon_intervals(tmp_path: Path) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text('[daemon]\nprobe_tick = "2s"\nscan_interval = "10m"\n')
    daemon = load_config(path, env={}).daemon
    assert daemon.intervals()["probe"] == 2.0 and daemon.intervals()["scan"] == 600.0
    assert daemon.intervals()["outbox"] == 30.0  # default kept
    path.write_text('[daemon]\noutbox_tick = "100ms"\n')
    with pytest.raises(ConfigError, match=r"daemon.outbox_tick.*out of range"):
        load_config(path, env={})


def test_rotation_credential_is_a_path_or_the_systemd_credential(tmp_path: Path) -> None:
    keyfile = tmp_path / "keyd-sa.json"
    keyfile.write_text("{}")
    path = write(tmp_path, f'[rotation]\nenabled = false\ncredential = "{keyfile}"\n')
    config = load_config(path, creds(tmp_path, zitadel_api_key="{}"))
    assert config.rotation is not None and config.rotation.credential == keyfile  # file first
    config = load_config(write(tmp_path, "[rotation]\nenabled = false\n"), {})
    assert config.rotation is not None and config.rotation.credential is None
    with pytest.raises(ConfigError, match="rotation.credential: rotation needs keyd's own"):
        load_config(write(tmp_path, '[issuer]\nurl = "https://z.example"\n[rotation]\n'), {})
    with pytest.raises(ConfigError, match=r"rotation: rotation needs an \[issuer\]"):
        load_config(write(tmp_path, f'[rotation]\ncredential = "{keyfile}"\n'), {})
    with pytest.raises(ConfigError, match="rotation.credential: .*does not exist"):
        load_config(write(tmp_path, '[rotation]\ncredential = "nope.json"\n'), {})
    inline = '[rotation]\ncredential = """{"type": "serviceaccount", "key": "-----BEGIN"}"""\n'
    with pytest.raises(ConfigError, match="rotation.credential: must be the path of a key file"):
        load_config(write(tmp_path, inline), {})


def test_zitadel_source(tmp_path: Path) -> None:
    keyfile = tmp_path / "keyd-sa.json"
    keyfile.write_text("{}")
    head = '[issuer]\nurl = "https://zitadel.example.com"\n'
    source = '[[sources]]\ntype = "zitadel"\n'
    config = load_config(
        write(tmp_path, head + source + f'organizations = ["1", "2", "1"]\ncredential = "{keyfile}"\n'), {}
    )
    (zitadel,) = config.sources
    assert zitadel.name == "zitadel:1,2" and zitadel.organizations == ("1", "2")  # type: ignore[union-attr]
    assert zitadel.interval == timedelta(hours=1) and zitadel.credential == keyfile  # type: ignore[union-attr]
    fallback = load_config(
        write(
            tmp_path,
            head + f'[rotation]\ncredential = "{keyfile}"\n' + source + 'users = ["7"]\ninterval = "2h"\n',
        ),
        {},
    )
    assert fallback.sources[0].credential == keyfile  # type: ignore[union-attr]
    systemd = load_config(
        write(tmp_path, head + source + 'users = ["7"]\n'), creds(tmp_path, zitadel_api_key="{}")
    )
    assert systemd.sources[0].credential == tmp_path / "credentials" / "zitadel-api-key"  # type: ignore[union-attr]
    bad = {
        'organizations = ["1"]\nusers = ["2"]\n': "either organizations or users",
        "": "either organizations or users",
        'users = ["a/b"]\n': "is not a ZITADEL id",
        'users = ["7"]\n': "needs keyd's own key file",
        'users = ["7"]\ninterval = "10s"\n': "interval",
    }
    for text, problem in bad.items():
        with pytest.raises(ConfigError, match=problem):
            load_config(write(tmp_path, head + source + text), {})
    with pytest.raises(ConfigError, match="needs an \\[issuer\\]"):
        load_config(write(tmp_path, source + f'users = ["7"]\ncredential = "{keyfile}"\n'), {})
