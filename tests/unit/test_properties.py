"""Property tests: arbitrary input through every parser and renderer that
meets the outside world. Arbitrary JSON, strings with control characters,
lone surrogates and NUL, huge numbers, the years 1 and 9999, arbitrary
TOML values: the only exceptions allowed out are keyd's own (the store's
part: tests/integration/inventory/test_storable_text.py; the issuer
answers: the issuer-client tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyd.checks.expiry import evaluate
from keyd.checks.ladder import ladder
from keyd.config import load_config
from keyd.config.schema import SCHEMA
from keyd.errors import ConfigError, KeyFileError
from keyd.report.mail import render_message
from keyd.sources.keyfile import parse_keyfile, parse_keyfile_mapping
from keyd.sources.vault import extract
from keyd.store.alerts import AlertRecord
from keyd.text import unsafe_char
from keyd.timeutil import get_zone
from tests.support.keys import make_key_file

PEM = str(make_key_file(None).data["key"])
ZONES = [get_zone(z) for z in ("UTC", "Asia/Tokyo", "America/New_York", "Pacific/Kiritimati")]
THRESHOLDS = [timedelta(days=d) for d in (30, 14, 7, 3, 1)]

# Text as key files and file names carry it: every code point, surrogates included.
odd_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    [
        "",
        " ",
        "\r\n",
        "\x00",
        "\udb37",
        "\u202e",
        "\x1b[2J",
        "9" * 400,
        "0001-01-01",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31",
        "0000-00-00T00:00:00Z",
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | odd_text
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(odd_text, kids, max_size=4),
    max_leaves=12,
)
years = st.sampled_from([1, 2, 1970, 2026, 9998, 9999])
instants = st.builds(
    lambda y, s: datetime(y, 1, 1, tzinfo=UTC) + timedelta(seconds=s),
    years,
    st.integers(min_value=0, max_value=364 * 86_400),
)
date_text = (
    instants.map(lambda d: d.isoformat().replace("+00:00", "Z"))
    | instants.map(lambda d: d.date().isoformat())
    | odd_text
)


def _keyfile_like(fields: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "serviceaccount", "keyId": "1", "key": PEM, "userId": "u"}
    base.update(fields)
    return base


fields = st.dictionaries(
    st.sampled_from(["type", "keyId", "userId", "clientId", "clientID", "appId", "expirationDate", "key"]),
    json_values | date_text,
    max_size=4,
)


def _judged(kf: Any, tz: Any) -> None:
    """What every stage does with a parsed key file must not raise either."""
    for at in (datetime(2026, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)):
        evaluate(kf.expiry, at, tz)
    if kf.expires_at is not None:
        ladder(kf.expires_at, THRESHOLDS)
    assert unsafe_char(kf.key_id) is None and unsafe_char(kf.principal) is None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_a_key_file_error(value: Any) -> None:
    try:
        parse_keyfile(json.dumps(value), source="f.json", validate="none")
    except KeyFileError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_key_file_error(data: bytes) -> None:
    try:
        parse_keyfile(data, source="f.json", validate="none")
    except KeyFileError:
        pass


@settings(max_examples=300, deadline=None)
@given(fields, st.sampled_from(ZONES))
def test_odd_fields_in_a_real_key_file(extra: dict[str, Any], tz: Any) -> None:
    try:
        kf = parse_keyfile_mapping(_keyfile_like(extra), source="f.json", tz=tz, validate="none")
    except KeyFileError as exc:
        assert "PRIVATE KEY" not in str(exc)
        return
    _judged(kf, tz)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(odd_text, json_values, max_size=6), odd_text, st.sampled_from(ZONES))
def test_the_vault_extractor(data: dict[str, Any], field: str, tz: Any) -> None:
    try:
        found = extract(data, field or "keyfile", "vault:secret/k")
        if isinstance(found, str):
            kf = parse_keyfile(found, source="vault:secret/k", tz=tz, validate="none")
        else:
            kf = parse_keyfile_mapping(found, source="vault:secret/k", tz=tz, validate="none")
    except KeyFileError:
        return
    _judged(kf, tz)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value).replace("inf", "inf").replace("nan", "nan")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string, or (\udb37) one TOML refuses


toml_values = st.recursive(
    st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | instants
    | odd_text
    | st.sampled_from(["1000000000d", "1h30m", "0s", "A" * 5000, "0.0.0.0:9464", "mysql://x/y", "../x"]),
    lambda kids: st.lists(kids, max_size=3),
    max_leaves=6,
)
sections = sorted(SCHEMA)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(sections), st.text(max_size=3), toml_values), max_size=5),
    st.dictionaries(
        st.sampled_from(
            [
                "KEYD_TIMEZONE",
                "KEYD_ISSUER_PROBE_INTERVAL",
                "KEYD_ISSUER_CONCURRENCY",
                "KEYD_HTTP_LISTEN",
                "KEYD_DATABASE_URL",
                "KEYD_ALERTS_DIGEST",
            ]
        ),
        odd_text.filter(lambda s: "\x00" not in s),
        max_size=2,
    ),
)
def test_arbitrary_toml_values_are_config_errors(
    tmp_path_factory: Any, entries: Any, env: dict[str, str]
) -> None:
    by_section: dict[str, list[str]] = {}
    for section, suffix, value in entries:
        keys = sorted(SCHEMA[section]) or ["x"]
        name = keys[len(suffix) % len(keys)] if not suffix.strip() else suffix
        by_section.setdefault(section, []).append(f"{json.dumps(name)} = {_toml(value)}")
    text = "\n".join(
        f"[{s}]\n" + "\n".join(lines) if s else "\n".join(lines) for s, lines in sorted(by_section.items())
    )
    path = Path(tmp_path_factory.mktemp("cfg")) / "keyd.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, env)
    except ConfigError:
        pass


def _alert(subject: str, context: dict[str, Any], kind: str, at: datetime) -> AlertRecord:
    return AlertRecord(
        1, "key:1", "ab" * 32, 1, kind, "7d", at, "warning", at, "<alert-1@keyd>", subject, context, None
    )


@settings(max_examples=300, deadline=None)
@given(
    odd_text,
    st.dictionaries(
        st.sampled_from(
            [
                "key_id",
                "principal",
                "expires_at",
                "last_usable_day",
                "timezone",
                "seconds_left",
                "decided_at",
                "locations",
                "error",
                "replaced_by",
                "issuer",
                "since",
                "fingerprint",
                "key_kind",
                "never_expires",
            ]
        ),
        json_values,
        max_size=8,
    ),
    st.sampled_from(["expiring", "expired", "rejected", "rotated", "untracked", "unavailable", "recovered"]),
    instants,
)
def test_the_mail_renderer_renders_anything(
    subject: str, context: dict[str, Any], kind: str, at: datetime
) -> None:
    message = render_message(
        [_alert(subject, context, kind, at)], sender="keyd@example.org", to=["ops@example.org"]
    )
    raw = message.as_bytes()  # what SMTP would send
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"\r\nSubject:") + head.startswith(b"Subject:") == 1
    assert b"\r\nBcc:" not in head
