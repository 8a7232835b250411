"""``/etc/keyd/keyd.toml`` for the Debian package, made from
``examples/keyd.toml``: every setting stays with its documentation but is
commented out, so keyd's defaults apply (SQLite at /var/lib/keyd/keyd.db),
except the directory source on ``/etc/keyd/keys``, the directory the
package's tmpfiles.d snippet creates for key files (0750 root:keyd)."""

from __future__ import annotations

import re

HEADER = """\
# /etc/keyd/keyd.toml, installed by the keyd package. This is a conffile:
# your changes survive upgrades (dpkg asks when the packaged version changes).
#
# Generated from keyd's examples/keyd.toml (also in
# /usr/share/doc/keyd/examples/): every setting is shown with its meaning and
# commented out, so keyd's defaults apply, among them the SQLite inventory at
# /var/lib/keyd/keyd.db. Active is only the directory source for key files
# in /etc/keyd/keys (group keyd may read them: chown root:keyd, chmod 0640).
# Uncomment and edit what you need, then run `keyd config check`.
# Reference: man keyd, /usr/share/doc/keyd/docs/configuration.md.gz
#
"""

_TABLE = re.compile(r"^\[\[?([A-Za-z0-9_.\"-]+)\]\]?\s*(#.*)?$")


def _blocks(lines: list[str]) -> list[list[str]]:
    """Split into blocks that each start at a table header (the first block
    holds what precedes the first table)."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if _TABLE.match(line.strip()):
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def _keep_active(block: list[str]) -> bool:
    return (
        bool(block)
        and block[0].strip() == "[[sources]]"
        and any(re.match(r'^type\s*=\s*"directory"', line) for line in block)
    )


def _comment(line: str) -> str:
    stripped = line.strip()
    return line if not stripped or stripped.startswith("#") else f"# {line}"


def commented_config(example: str) -> str:
    body = example.splitlines()
    # The example's own opening comment speaks of itself; ours replaces it.
    while body and body[0].startswith("#"):
        body.pop(0)
    out: list[str] = []
    for block in _blocks(body):
        out.extend(block if _keep_active(block) else [_comment(line) for line in block])
    return HEADER + "\n".join(out).strip("\n") + "\n"
