"""`make demo`: keyd's main job, end to end, on this machine only.

Starts OpenBao (dev mode), the ZITADEL-compatible test issuer and a mail
catcher (aiosmtpd writing a Maildir), all on loopback; creates five
service users — healthy, expiring in 5 days, already expired, revoked at
the issuer, and one whose key lives in Vault — plus one key that exists
only in ZITADEL (made in the console, never deployed), which the
`zitadel` source reports as unheld; writes a keyd.toml that
uses them, and runs the real `keyd` command line against it:
`keyd db upgrade`, `keyd check`, `keyd status`. Then it shows the alert
mail that arrived and the token keyd wrote to Vault (metadata only: an
access token is never printed), the rotation of the expiring key (keyd's
own service user holds the Org User Manager role at the test issuer; the
new key was registered, proven and written in place during the check, and
its tokens are already in Vault), and stops everything it started.

Everything lives under ./demo-run/ (recreated on each run).
"""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.handlers import Mailbox  # noqa: E402

from tests.support.issuer import IssuerServer  # noqa: E402
from tests.support.keys import make_key_file  # noqa: E402
from tests.support.openbao import OpenBao  # noqa: E402
from tests.support.zitadel_api import DEFAULT_ORG, make_api_user  # noqa: E402

RUN = ROOT / "demo-run"
KEYD = [sys.executable, "-m", "keyd.cli"]


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def keyd(config: Path, *args: str) -> int:
    cmd = [*KEYD, "--config", str(config), *args]
    print(f"$ keyd {' '.join(args)}", flush=True)
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, check=False
    )
    print(f"(exit {proc.returncode})", flush=True)
    return proc.returncode


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_users(issuer: IssuerServer, bao: OpenBao, keys_dir: Path) -> None:
    now = datetime.now(UTC)
    users = [
        ("healthy", now + timedelta(days=180), True),
        ("expiring", now + timedelta(days=5), True),
        ("expired", now - timedelta(days=2), True),
        ("revoked", now + timedelta(days=60), False),  # removed in ZITADEL, file still here
    ]
    for name, expires, registered in users:
        made = make_key_file(
            keys_dir,
            user_id=f"svc-{name}",
            expires_at=expires,
            register_with=issuer if registered else None,
            fresh=True,
        )
        print(
            f"  {made.path.relative_to(ROOT)}: user {made.principal}, key {made.key_id}, "
            f"expires {expires:%Y-%m-%d %H:%M}Z{'' if registered else ' (revoked at issuer)'}"
        )
    vault_dir = RUN / "vault-staging"
    vault_dir.mkdir()
    made = make_key_file(
        vault_dir,
        user_id="svc-payments",
        expires_at=now + timedelta(days=90),
        register_with=issuer,
        fresh=True,
    )
    bao.kv_put("zitadel/keys/payments", {"keyfile": made.path.read_text()})
    shutil.rmtree(vault_dir)  # the only copy now lives in Vault
    # keyd's own service user (lists ZITADEL's keys, rotates them), its key file where keyd
    # watches it
    own = make_api_user(issuer, keys_dir, role="ORG_USER_MANAGER")
    print(f"  {own.path.relative_to(ROOT)}: keyd's own user {own.principal} (ORG_USER_MANAGER)")
    console = make_key_file(
        None, user_id="svc-healthy", expires_at=now + timedelta(days=400), register_with=issuer
    )
    print(
        f"  (nowhere on disk): key {console.key_id} of svc-healthy, made in the console "
        "and never deployed: only ZITADEL knows it"
    )
    print(f"  vault:secret/zitadel/keys/payments: user svc-payments, key {made.key_id}")


def write_config(issuer: IssuerServer, bao: OpenBao, smtp_port: int) -> Path:
    token_file = RUN / "vault-token"
    token_file.write_text(bao.root_token + "\n")
    token_file.chmod(0o600)
    config = RUN / "keyd.toml"
    config.write_text(
        textwrap.dedent(f"""\
        # written by `make demo`
        timezone = "Europe/Zurich"

        [database]
        url = "sqlite:///{RUN / "keyd.db"}"

        [issuer]
        url = "{issuer.url}"
        scopes = ["openid", "urn:zitadel:iam:org:project:id:zitadel:aud"]

        [[sources]]
        type = "directory"
        path = "{RUN / "keys"}"

        [[sources]]
        type = "vault"
        mount = "secret"
        prefix = "zitadel/keys"

        [[sources]]
        type = "zitadel"
        organizations = ["{DEFAULT_ORG}"]

        [rotation]
        # keyd's own service user (Org User Manager) for ZITADEL's key API: lists keys
        # for the zitadel source and rotates keys with less than rotation.before left
        credential = "{RUN / "keys" / "keyd-api.json"}"

        [vault]
        addr = "{bao.addr}"
        auth = "token"
        token_file = "{token_file}"

        [tokens]
        mount = "secret"
        path = "zitadel/tokens/{{principal}}"

        [alerts.email]
        host = "127.0.0.1"
        port = {smtp_port}
        security = "none"
        from = "keyd@demo.example"
        to = ["ops@demo.example"]
        """)
    )
    return config


def show_mail(maildir: Path) -> None:
    box = mailbox.Maildir(str(maildir), create=False)
    messages = sorted(box, key=lambda m: str(m["Subject"]))
    print(f"{len(messages)} message(s) in {maildir.relative_to(ROOT)}/")
    for msg in messages:
        print(f"  To: {msg['To']}  Subject: {msg['Subject']}")
    if messages:
        first = messages[0]
        body = next(
            (
                part.get_payload(decode=True).decode()
                for part in first.walk()
                if part.get_content_type() == "text/plain"
            ),
            "",
        )
        print("\n  First message, plain-text part:")
        print(textwrap.indent(body.strip()[:1500], "    | "))


def show_tokens(bao: OpenBao) -> None:
    import hvac.exceptions

    try:
        listing = bao.client.secrets.kv.v2.list_secrets(path="zitadel/tokens", mount_point="secret")
    except hvac.exceptions.InvalidPath:
        print("  no tokens under secret/zitadel/tokens/")
        return
    for name in listing["data"]["keys"]:
        secret = bao.client.secrets.kv.v2.read_secret_version(
            path=f"zitadel/tokens/{name}", mount_point="secret", raise_on_deleted_version=True
        )
        data = dict(secret["data"]["data"])
        token = data.pop("access_token", "")
        meta = secret["data"]["metadata"]
        print(
            f"  secret/zitadel/tokens/{name} v{meta['version']} custom_metadata={meta.get('custom_metadata')}"
        )
        print(
            f"    access_token: <{len(token)} characters, not shown>  "
            + "  ".join(f"{k}={v}" for k, v in sorted(data.items()))
        )


def main() -> int:
    if RUN.exists():
        shutil.rmtree(RUN)
    (RUN / "keys").mkdir(parents=True, mode=0o700)
    with ExitStack() as stack:
        banner("Starting OpenBao (dev), the test issuer and a mail catcher on loopback")
        bao = OpenBao.start()
        stack.callback(bao.stop)
        issuer = IssuerServer().start()
        stack.callback(issuer.stop)
        smtp_port = free_port()
        smtp = Controller(Mailbox(str(RUN / "mailbox")), hostname="127.0.0.1", port=smtp_port)
        smtp.start()
        stack.callback(smtp.stop)
        print(f"  OpenBao {bao.addr}  issuer {issuer.url}  SMTP 127.0.0.1:{smtp_port}")

        banner("Creating service users and their keys")
        make_users(issuer, bao, RUN / "keys")
        config = write_config(issuer, bao, smtp_port)
        print(f"  config: {config.relative_to(ROOT)}")

        banner("keyd db upgrade")
        if keyd(config, "db", "upgrade") != 0:
            return 1
        banner("keyd check   (one full cycle: scan, alerts, probes, token write-back, mail)")
        check_code = keyd(config, "check")
        banner("keyd status")
        keyd(config, "status")
        banner("Mail that keyd sent")
        show_mail(RUN / "mailbox")
        banner("Tokens keyd keeps fresh in Vault")
        show_tokens(bao)
        banner("Rotation: the expiring key was replaced during that cycle")
        keyd(config, "rotations")
        print(
            f"  ZITADEL now lists for svc-expiring: "
            f"{sorted(k.key_id for k in issuer.keys() if k.principal == 'svc-expiring')} "
            "(old and new overlap for rotation.overlap = 7d, then keyd removes the old one)"
        )
        banner("keyd check again: nothing left to rotate; the new key's tokens keep flowing")
        keyd(config, "check")
        show_tokens(bao)
        banner("Stopping everything")
    print(f"\nkeyd check exited {check_code} (2 = critical: an expired and a revoked key).")
    print(
        "Re-run `keyd` by hand with the same config after `make demo` keeps nothing running;\n"
        f"files are left in {RUN.relative_to(ROOT)}/ for a look."
    )
    return 0 if check_code in (0, 1, 2) else 1


if __name__ == "__main__":
    sys.exit(main())
