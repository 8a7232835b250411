"""The text files of keyd's Debian package: ``DEBIAN/control``, the
machine-readable ``copyright`` (keyd plus every distribution vendored in
the venv, from its own metadata) and the changelog."""

from __future__ import annotations

import email.utils
from email.parser import Parser
from pathlib import Path

DESCRIPTION = """\
keeps ZITADEL service-user keys alive
 keyd finds every ZITADEL service-user key file (in directories and in
 Vault/OpenBao KV v2), tracks it in a database, warns before it expires
 (e-mail, webhook, Prometheus metrics), proves each key can still mint a
 token, and keeps fresh access tokens in Vault for services that need one.
 .
 This package installs keyd with its Python dependencies in a private
 virtual environment under /usr/lib/keyd (PostgreSQL support included,
 through the system's libpq), the systemd units keyd.service and
 keyd-check.timer (neither enabled nor started), and a configuration in
 /etc/keyd/keyd.toml."""


def control(meta: dict[str, str]) -> str:
    fields = {
        "Package": "keyd",
        "Version": meta["version"],
        "Architecture": meta["arch"],
        "Maintainer": meta["maintainer"],
        "Installed-Size": meta["installed_size"],
        # python3.X: the venv is built on exactly this interpreter. libpq5:
        # psycopg's PostgreSQL client library. systemd: sysusers, tmpfiles
        # and the units; procps: the units' ExecReload=/bin/kill. shlibs:
        # what the wheels' shared objects link against.
        "Depends": f"{meta['python']}, libpq5, systemd, procps, {meta['shlibs']}",
        "Section": "admin",
        "Priority": "optional",
        "Description": DESCRIPTION,
    }
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def _vendored(venv: Path) -> list[tuple[str, str, str]]:
    """(name, version, license) of each distribution in the venv."""
    out = []
    for info in sorted(venv.glob("lib/python3*/site-packages/*.dist-info/METADATA")):
        meta = Parser().parsestr(info.read_text(errors="replace"), headersonly=True)
        lic = meta.get("License-Expression") or ""
        if not lic:
            classifiers = [
                c.split(" :: ")[-1] for c in meta.get_all("Classifier", []) if c.startswith("License ::")
            ]
            lic = " or ".join(classifiers) or (meta.get("License") or "see its license file")
        out.append((meta["Name"], meta["Version"], " ".join(lic.split())[:120]))
    return out


def copyright_file(venv: Path) -> str:
    head = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: keyd\n"
        "Comment: keyd's dependencies are vendored in /usr/lib/keyd (a virtual\n"
        " environment built from their wheels); each one's license text ships in its\n"
        " .dist-info directory there. They are listed below with the license their\n"
        " metadata declares.\n\n"
        "Files: *\n"
        "Copyright: keyd developers\n"
        "License: Apache-2.0\n\n"
    )
    vendored = "".join(
        f"Files: usr/lib/keyd/lib/*/site-packages/{name.lower().replace('-', '_')}*\n"
        f"Copyright: the {name} {version} authors\n"
        f"License: {lic.replace(chr(10), ' ')}\n"
        f" See the license files in its .dist-info directory.\n\n"
        for name, version, lic in _vendored(venv)
        if name.lower() != "keyd"
    )
    license_text = (
        "License: Apache-2.0\n"
        " On Debian systems, the full text of the Apache License, Version 2.0 can be\n"
        " found in /usr/share/common-licenses/Apache-2.0.\n"
    )
    return head + vendored + license_text


def debian_changelog(meta: dict[str, str]) -> str:
    date = email.utils.formatdate(int(meta["epoch"])).replace("-0000", "+0000")
    return (
        f"keyd ({meta['version']}) unstable; urgency=medium\n\n"
        f"  * keyd {meta['version']}, packaged from its wheel by `make deb`.\n\n"
        f" -- {meta['maintainer']}  {date}\n"
    )
