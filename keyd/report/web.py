"""The status page's frame: one HTML document, its style sheet and script.

No assets from anywhere: the CSS and the few lines of plain JavaScript
(filter and sort the key table) are inline, and the HTTP server sends a
Content-Security-Policy that allows exactly these two blocks by hash
(``CONTENT_SECURITY_POLICY``), so even markup that slipped past escaping
could not run a script. ``e()`` escapes every text that reaches the page;
helpers here take text and escape it themselves, or take markup that was
built with ``e()``.

Status colors are CSS custom properties (``--s-<status>``); each passes
WCAG AA contrast (4.5:1) as text on the page background and 3:1 as a
mark on every threshold band (tests compute it from this style sheet).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from html import escape
from typing import Final, TypeAlias

#: A table row: attributes for its ``<tr>``, then its cells as markup.
Row: TypeAlias = tuple[dict[str, str], list[str]]

#: Statuses the page colors (``keyd.report.status.shown_status``).
STATUSES: Final = ("active", "expiring", "expired", "rejected", "invalid", "missing", "unheld")

STYLE: Final = """
:root { --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --s-active: #1a7f37; --s-expiring: #9a6700; --s-expired: #cf222e;
  --s-rejected: #8250df; --s-invalid: #bc4c00; --s-missing: #57606a; --s-unheld: #0550ae;
  --band-0: #ffd8b5; --band-1: #ffe2c7; --band-2: #ffecd9; --band-3: #fff3e8;
  --band-4: #fff9f3; --zone: #f6f8fa; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg);
  margin: 1.5rem; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.summary { font-weight: 600; padding: .4rem .6rem; border-left: 4px solid var(--muted); }
.verdict-ok { border-color: var(--s-active); } .verdict-warning { border-color: var(--s-expiring); }
.verdict-critical { border-color: var(--s-expired); } .verdict-unknown { border-color: var(--muted); }
.muted, footer { color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0;
  cursor: pointer; color: inherit; }
td { overflow-wrap: break-word; } td.wrap { overflow-wrap: anywhere; }
td.when { white-space: nowrap; } td.num { text-align: right; }
code { font-size: 12px; word-break: break-all; }
.status { font-weight: 600; }
.s-active.status { color: var(--s-active); } .s-expiring.status { color: var(--s-expiring); }
.s-expired.status { color: var(--s-expired); } .s-rejected.status { color: var(--s-rejected); }
.s-invalid.status { color: var(--s-invalid); } .s-missing.status { color: var(--s-missing); }
.s-unheld.status { color: var(--s-unheld); }
svg.timeline { max-width: 100%; height: auto; }
svg .mark.s-active { fill: var(--s-active); } svg .mark.s-expiring { fill: var(--s-expiring); }
svg .mark.s-expired { fill: var(--s-expired); } svg .mark.s-rejected { fill: var(--s-rejected); }
svg .mark.s-invalid { fill: var(--s-invalid); } svg .mark.s-missing { fill: var(--s-missing); }
svg .mark.s-unheld { fill: var(--s-unheld); } svg .undated.s-unheld { stroke: var(--s-unheld); }
svg .band-0 { fill: var(--band-0); } svg .band-1 { fill: var(--band-1); }
svg .band-2 { fill: var(--band-2); } svg .band-3 { fill: var(--band-3); }
svg .band-4 { fill: var(--band-4); }
svg .zone-expired, svg .zone-later { fill: var(--zone); }
svg .mark.undated { fill: var(--bg); stroke-width: 2.5; }
svg .undated.s-active { stroke: var(--s-active); } svg .undated.s-expiring { stroke: var(--s-expiring); }
svg .undated.s-expired { stroke: var(--s-expired); } svg .undated.s-rejected { stroke: var(--s-rejected); }
svg .undated.s-invalid { stroke: var(--s-invalid); } svg .undated.s-missing { stroke: var(--s-missing); }
.legend { display: flex; flex-wrap: wrap; gap: .25rem 1rem; list-style: none; padding: 0; }
.legend .dot { display: inline-block; width: .7rem; height: .7rem; border-radius: 50%;
  margin-right: .3rem; vertical-align: -1px; }
.dot.s-active { background: var(--s-active); } .dot.s-expiring { background: var(--s-expiring); }
.dot.s-expired { background: var(--s-expired); } .dot.s-rejected { background: var(--s-rejected); }
.dot.s-invalid { background: var(--s-invalid); } .dot.s-missing { background: var(--s-missing); }
.dot.s-unheld { background: var(--s-unheld); }
.dot.undated { background: var(--bg); border: 2px solid var(--s-active); width: .5rem; height: .5rem; }
svg text { font: 12px system-ui, sans-serif; fill: var(--fg); }
svg .now { stroke: var(--fg); stroke-dasharray: 3 3; }
ul.problems li { margin: .2rem 0; }
label { margin-right: .5rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; } dd { margin: 0; }
"""

SCRIPT: Final = """
document.querySelectorAll('[data-filter]').forEach(function (input) {
  var rows = document.querySelectorAll('#' + input.dataset.filter + ' tbody tr');
  input.addEventListener('input', function () {
    var q = input.value.toLowerCase();
    rows.forEach(function (r) { r.hidden = q && r.textContent.toLowerCase().indexOf(q) < 0; });
  });
});
document.querySelectorAll('th button[data-col]').forEach(function (b) {
  b.addEventListener('click', function () {
    var body = b.closest('table').tBodies[0], col = +b.dataset.col, up = b.dataset.up !== '1';
    b.dataset.up = up ? '1' : '0';
    var key = function (r) { var c = r.cells[col]; return c.dataset.sort || c.textContent; };
    Array.from(body.rows).sort(function (x, y) {
      var a = key(x), z = key(y), n = parseFloat(a) - parseFloat(z);
      var d = isNaN(n) ? a.localeCompare(z) : n;
      return up ? d : -d;
    }).forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src '{_hash(STYLE)}'; script-src '{_hash(SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def status_class(status: str) -> str:
    """The CSS class of a shown status: ``s-`` and its first word (``rejected
    (removed)`` is colored as ``rejected``), letters only."""
    word = status.split(" ", 1)[0] if status else ""
    return "s-" + "".join(c for c in word.lower() if "a" <= c <= "z")


def e(value: object) -> str:
    """Escape for HTML text and attribute values (quotes included)."""
    return escape("" if value is None else str(value), quote=True)


def legend() -> str:
    """What the timeline's colors and shapes mean (never color alone: each
    mark's title says its status too)."""
    items = "".join(f'<li><span class="dot s-{s}" aria-hidden="true"></span>{s}</li>' for s in STATUSES)
    items += (
        '<li><span class="dot undated" aria-hidden="true"></span>ring: no expiry date (never or unknown)</li>'
    )
    return f'<ul class="legend" aria-label="Legend">{items}</ul>'


def document(title: str, body: str, *, script: bool = False) -> str:
    """A complete page; ``body`` is markup built with ``e()``."""
    tail = f"<script>{SCRIPT}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n{tail}</body></html>\n"
    )


def table(
    table_id: str, caption: str, headers: Sequence[str], rows: Iterable[Row], *, sortable: bool = False
) -> str:
    """A table; each row is (attributes for ``<tr>``, cells as markup).
    A cell may be a full ``<td …>…</td>``; anything else is wrapped."""
    if sortable:
        heads = "".join(
            f'<th scope="col"><button type="button" data-col="{i}">{e(h)}</button></th>'
            for i, h in enumerate(headers)
        )
    else:
        heads = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    body = []
    for attrs, cells in rows:
        attr = "".join(f' {name}="{e(value)}"' for name, value in attrs.items())
        tds = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
        body.append(f"<tr{attr}>{tds}</tr>")
    return (
        f'<table id="{e(table_id)}"><caption class="muted">{e(caption)}</caption>'
        f"<thead><tr>{heads}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
    )


def cell(text: object, *, field: str | None = None, css: str | None = None, sort: object = None) -> str:
    """``<td>`` with escaped text and optional ``data-field``/class/sort key."""
    attrs = ""
    if field:
        attrs += f' data-field="{e(field)}"'
    if css:
        attrs += f' class="{e(css)}"'
    if sort is not None:
        attrs += f' data-sort="{e(sort)}"'
    return f"<td{attrs}>{e(text)}</td>"


def facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list of (label, already-escaped value markup)."""
    items = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f"<dl>{items}</dl>"
