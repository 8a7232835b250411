"""The status page in a real browser: the real ``keyd run`` serves a fixture
inventory, Debian's headless Chromium loads it.

Proves: one timeline mark per key, the key table says what
``keyd status --json`` says, ``/api/v1/status`` is that same document, a
key id carrying ``<script>``/``<img onerror>`` is shown as text and runs
nothing, the basics of accessibility hold (labels, status colors' contrast
as the browser computes them), and a screenshot lands in the test's
folder."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from keyd.store.migrate import upgrade
from tests.support.browser import Browser
from tests.support.daemon import KEYD, Notifications, free_port, start_keyd, stop
from tests.support.keyfiles import write_keyfile

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOW = datetime.now(UTC)
HOSTILE = '<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">'
KEYS: list[tuple[str, str, str | datetime | None]] = [
    ("healthy-200d", "svc-billing", NOW + timedelta(days=200)),
    ("soon-5d", "svc-billing", NOW + timedelta(days=5)),
    ("soon-20d", "svc-mail", NOW + timedelta(days=20)),
    ("expired-3d", "svc-legacy", NOW - timedelta(days=3)),
    ("forever", "svc-ops", "9999-12-31T23:59:59Z"),
    ("no-date", "svc-old", None),
    (HOSTILE, "attacker<b>", NOW + timedelta(days=10)),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(base URL, config, output folder) of a running ``keyd run``."""
    tmp = tmp_path_factory.mktemp("status-page")
    keys = tmp / "keys"
    for i, (key_id, user, expires) in enumerate(KEYS):
        write_keyfile(keys / f"key-{i}.json", key_id, user, expires=expires)
    (keys / "broken.json").write_text("{not json")
    (keys / "broken.json").chmod(0o600)
    db = tmp / "keyd.db"
    upgrade(f"sqlite:///{db}")
    port = free_port()
    config = tmp / "keyd.toml"
    config.write_text(
        f'timezone = "Europe/Berlin"\n[database]\nurl = "sqlite:///{db}"\n'
        f'[[sources]]\ntype = "directory"\npath = "{keys}"\n'
        f'[alerts]\nthresholds = ["30d", "14d", "7d", "1d"]\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    notes = Notifications(tmp / "notify.sock")
    proc = start_keyd(config, notes, tmp / "keyd.log")
    try:
        notes.wait_for("READY=1", timeout=60)
        yield f"http://127.0.0.1:{port}", config, tmp
    finally:
        stop(proc)
        notes.close()


@pytest.fixture(scope="module")
def browser(served: tuple[str, Path, Path]) -> Iterator[Browser]:
    b = Browser(served[2])
    try:
        yield b
    finally:
        b.close()


def status_json(config: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*KEYD, "--config", str(config), "status", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return list(json.loads(out.stdout)["keys"])


def _without_clock(doc: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents minus ``seconds_left``, which moves while the test runs."""
    return [{k: v for k, v in item.items() if k != "seconds_left"} for item in doc]


TABLE_JS = """
return Array.from(document.querySelectorAll('#keys tbody tr')).map(function (tr) {
  var row = {key_id_attr: tr.dataset.keyId};
  tr.querySelectorAll('td[data-field]').forEach(function (td) {
    row[td.dataset.field] = td.textContent; });
  return row;
});"""


def expected_row(item: dict[str, Any]) -> dict[str, str]:
    shown = (
        "expiring" if item["status"] == "active" and item["expiry_status"] == "expiring" else item["status"]
    )
    expires = item["expiry_status"] if item["expiry_status"] in ("never", "unknown") else item["expires_at"]
    return {
        "key_id_attr": item["key_id"],
        "key_id": item["key_id"],
        "principal": item["principal"],
        "expires_at": expires,
        "last_usable_day": item["last_usable_day"] or "-",
        "days_left": "-" if item["days_left"] is None else str(item["days_left"]),
        "status": shown,
    }


def test_page_matches_status_json(served: tuple[str, Path, Path], browser: Browser) -> None:
    base, config, out = served
    browser.get(base + "/")
    keys = [item for item in status_json(config) if item["key_id"] is not None]
    assert len(keys) == len(KEYS)
    marks = browser.run(
        "return Array.from(document.querySelectorAll('svg.timeline .mark'))"
        ".map(function (m) { return m.dataset.keyId; });"
    )
    assert sorted(marks) == sorted(item["key_id"] for item in keys)
    fields = ("key_id_attr", "key_id", "principal", "expires_at", "last_usable_day", "days_left", "status")
    rows = {r["key_id_attr"]: {f: r[f] for f in fields} for r in browser.run(TABLE_JS)}
    assert rows == {item["key_id"]: expected_row(item) for item in keys}
    summary = browser.run("return document.getElementById('summary').textContent;")
    assert summary.startswith("KEYD CRITICAL - 1 expired")
    problems = browser.run("return document.querySelector('ul.problems').textContent;")
    assert "broken.json" in problems
    shot = browser.screenshot(out / "status-page.png")
    assert shot.stat().st_size > 10_000


def test_api_is_the_status_json(served: tuple[str, Path, Path]) -> None:
    base, config, _ = served
    api = httpx.get(base + "/api/v1/status", timeout=30).json()
    assert api["schema"] == "keyd.status/1"
    assert _without_clock(api["keys"]) == _without_clock(status_json(config))


def test_hostile_key_id_is_text(served: tuple[str, Path, Path], browser: Browser) -> None:
    base, _, out = served
    browser.get(base + "/")
    state = browser.run(
        """
      var cell = document.querySelector('#keys tbody tr[data-key-id="' +
                                        CSS.escape(arguments[0]) + '"] td[data-field="key_id"]');
      return {pwned: window.__pwned || null, scripts: document.scripts.length,
              images: document.images.length, cell: cell && cell.textContent};""",
        HOSTILE,
    )
    assert state == {"pwned": None, "scripts": 1, "images": 0, "cell": HOSTILE}
    browser.get(base + "/keys/" + quote(HOSTILE, safe=""))
    page = browser.run(
        "return {pwned: window.__pwned || null, h1: "
        "document.querySelector('h1').textContent, images: document.images.length};"
    )
    assert page == {"pwned": None, "h1": f"Key {HOSTILE}", "images": 0}
    browser.screenshot(out / "key-page.png")


def _luminance(rgb: str) -> float:
    channels = [int(c) / 255 for c in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_accessibility_basics(served: tuple[str, Path, Path], browser: Browser) -> None:
    browser.get(served[0] + "/")
    found = browser.run("""
      var bg = getComputedStyle(document.body).backgroundColor;
      return {
        lang: document.documentElement.lang,
        unlabelled: Array.from(document.querySelectorAll('input')).filter(
          function (i) { return !i.labels || i.labels.length === 0; }).length,
        svg: document.querySelector('svg.timeline').getAttribute('role'),
        svgName: document.querySelector('svg.timeline').getAttribute('aria-labelledby'),
        headers: Array.from(document.querySelectorAll('th')).every(
          function (th) { return th.getAttribute('scope') === 'col'; }),
        background: bg,
        colors: Array.from(document.querySelectorAll('td.status')).map(function (td) {
          return [td.textContent, getComputedStyle(td).color]; })
      };""")
    assert found["lang"] == "en" and found["unlabelled"] == 0 and found["headers"]
    assert found["svg"] == "img" and found["svgName"]
    bg = _luminance(found["background"])
    assert {status for status, _ in found["colors"]} >= {"active", "expiring", "expired"}
    for status, color in found["colors"]:
        fg = _luminance(color)
        ratio = (max(fg, bg) + 0.05) / (min(fg, bg) + 0.05)
        assert ratio >= 4.5, f"{status} text {color} on {found['background']}: {ratio:.2f}"
