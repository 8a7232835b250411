"""`keyd jwt` and `keyd mint` against the ZITADEL-compatible test issuer."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.cli import main
from keyd.errors import EXIT_BAD_RESPONSE, EXIT_OK, EXIT_REJECTED, EXIT_UNAVAILABLE
from tests.support.issuer import IssuerServer
from tests.support.keys import make_key_file

pytestmark = pytest.mark.issuer
LATER = datetime.now(UTC) + timedelta(days=90)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_mint_prints_the_token_alone(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    code, out, err = run(
        capsys,
        "--debug",
        "mint",
        str(key.path),
        "--issuer",
        issuer.url,
        "--scope",
        "urn:zitadel:iam:org:project:id:zitadel:aud",
    )
    assert code == EXIT_OK, err
    assert out.strip() == issuer.issued_tokens[-1] and out.startswith("zat_")
    claims = issuer.assertions[-1][1]
    assert claims["iss"] == claims["sub"] == key.principal and claims["aud"] == issuer.url
    # the token is printed on stdout on purpose, and nowhere else; the test
    # server runs in this process, so judge only the client side's loggers
    client_side = [r.getMessage() for r in caplog.records if not r.name.startswith(("authlib", "tests."))]
    err_lines = [
        line for line in err.splitlines() if "logger=authlib" not in line and "logger=tests." not in line
    ]
    assert client_side and not [line for line in err_lines if "zat_" in line or "eyJ" in line]
    assert not [m for m in client_side if "zat_" in m or "eyJ" in m or "PRIVATE" in m]


def test_mint_json(issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    issuer.set_token_lifetime(600)
    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer, alg="ES256")
    code, out, _ = run(capsys, "mint", str(key.path), "--issuer", issuer.url, "--json")
    doc = json.loads(out)
    assert code == EXIT_OK and doc["token_type"] == "Bearer" and doc["expires_in"] == 600
    assert doc["schema"] == "keyd.mint/1" and doc["expires_at"].endswith("Z")
    assert doc["access_token"] == issuer.issued_tokens[-1]


@pytest.mark.parametrize("style", ["400", "500"])
def test_unknown_key_is_rejected_in_both_styles(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], style: str
) -> None:
    issuer.reject_style = style
    key = make_key_file(tmp_path, expires_at=LATER)  # never registered: unknown to the issuer
    code, out, err = run(capsys, "mint", str(key.path), "--issuer", issuer.url)
    assert code == EXIT_REJECTED and out == ""
    assert "revoked or unknown to the issuer" in err and str(key.path) in err


def test_expired_key_is_diagnosed_locally(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    key = make_key_file(tmp_path, expires_at=past, register_with=issuer)
    code, _, err = run(capsys, "mint", str(key.path), "--issuer", issuer.url)
    assert code == EXIT_REJECTED and "the key expired on" in err


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("503", EXIT_UNAVAILABLE),
        ("close", EXIT_UNAVAILABLE),
        ("garbage", EXIT_BAD_RESPONSE),
        ("no_token", EXIT_BAD_RESPONSE),
        ("oversized", EXIT_BAD_RESPONSE),
    ],
)
def test_faults_are_classified(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, code: int
) -> None:
    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    issuer.fail_mode = mode
    got, out, err = run(capsys, "mint", str(key.path), "--issuer", issuer.url)
    assert got == code and out == "" and err.startswith("keyd: ")


def test_hang_times_out_as_unavailable(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    issuer.hang_seconds = 5
    issuer.fault_paths = {"/oauth/v2/token"}
    issuer.fail_mode = "hang"
    code, _, err = run(capsys, "mint", str(key.path), "--issuer", issuer.url, "--timeout", "1s")
    assert code == EXIT_UNAVAILABLE and "no complete answer within 1s" in err


def test_connection_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = make_key_file(tmp_path, expires_at=LATER)
    code, _, err = run(capsys, "mint", str(key.path), "--issuer", "http://127.0.0.1:9")
    assert code == EXIT_UNAVAILABLE and "ConnectError" in err
    # a stopped issuer says so in words, not only in an exception name
    assert err.startswith("keyd: issuer unavailable: discovery at http://127.0.0.1:9/")


def test_a_stopped_issuer_is_unavailable(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    url = issuer.url
    issuer.stop()
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "mint", str(key.path), "--issuer", url, *extra)
        assert code == EXIT_UNAVAILABLE and out == ""
        assert err.startswith("keyd: issuer unavailable: "), err


def test_jwt_output_is_accepted_by_the_issuer(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    code, out, _ = run(capsys, "jwt", str(key.path), "--audience", issuer.url, "--lifetime", "2m")
    assert code == EXIT_OK
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": out.strip(),
        "scope": "openid",
    }
    answer = httpx.post(issuer.url + "/oauth/v2/token", data=form, timeout=10)
    assert answer.status_code == 200 and answer.json()["access_token"].startswith("zat_")
    code, _, err = run(capsys, "jwt", str(key.path), "--audience", issuer.url, "--lifetime", "2h")
    assert code == 4 and "one hour" in err


def test_wrong_audience_is_rejected(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ZITADEL compares aud byte for byte: a trailing slash fails (docs/zitadel.md §3)."""
    import httpx

    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    run(capsys, "jwt", str(key.path), "--audience", issuer.url + "/")
    out = main(["jwt", str(key.path), "--audience", issuer.url + "/"])
    assertion = capsys.readouterr().out.strip()
    assert out == EXIT_OK
    answer = httpx.post(
        issuer.url + "/oauth/v2/token",
        timeout=10,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": assertion,
            "scope": "openid",
        },
    )
    assert answer.status_code == 400


def test_application_key_proves_itself_by_introspection(
    issuer: IssuerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = make_key_file(
        tmp_path, expires_at=LATER, kind="application", register_with=issuer, client_id_field="clientID"
    )
    code, out, err = run(capsys, "mint", str(key.path), "--issuer", issuer.url)
    assert code == EXIT_OK and out == "" and "accepted" in err
    issuer.remove_key(key.key_id)
    code, _, err = run(capsys, "mint", str(key.path), "--issuer", issuer.url)
    assert code == EXIT_REJECTED


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("gzip_junk", "cannot be decoded as its Content-Encoding says"),
        ("huge_expiry", "not a token lifetime"),
        ("crlf_token", "not an RFC 6750 b64token"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_odd_token_answers_are_bad_answers(
    issuer: IssuerServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    words: str,
    as_json: bool,
) -> None:
    """A gzip label over junk, expires_in = 10^30, a token with CR/LF: exit
    7 with one line (they crashed `keyd mint --json`); no token printed."""
    key = make_key_file(tmp_path, expires_at=LATER, register_with=issuer)
    issuer.fail_mode = mode
    code, out, err = run(
        capsys, "mint", str(key.path), "--issuer", issuer.url, *(["--json"] if as_json else [])
    )
    assert (code, out) == (EXIT_BAD_RESPONSE, "")
    assert err.startswith("keyd: ") and words in err and len(err.splitlines()) == 1
    assert "zat_" not in err
