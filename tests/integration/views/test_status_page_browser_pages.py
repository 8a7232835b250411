"""The status page's listing in a real browser, on an inventory larger than
one page: a real ``keyd run`` serves it, Debian's headless Chromium
follows the page links.

Proves: the listing holds at most ``PAGE_SIZE`` keys, its "next" links
reach every key exactly once in key id order, the key that needs
attention is in the attention table on every page, a principal's link
lists that principal's keys, a hostile principal in a link stays text
and runs nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyd.report.pages import PAGE_SIZE
from keyd.store.migrate import upgrade
from tests.support.browser import Browser
from tests.support.daemon import Notifications, free_port, start_keyd, stop
from tests.support.keyfiles import write_keyfile

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOW = datetime.now(UTC)
N = 2 * PAGE_SIZE + 30
HOSTILE = 'svc-<img src=x onerror="window.__pwned=1">&x'
IDS = [f"key-{i:04d}" for i in range(N)]


def principal(i: int) -> str:
    return HOSTILE if i == 7 else f"svc-{i // 10:03d}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("status-pages")
    keys = tmp / "keys"
    for i, key_id in enumerate(IDS):
        expires = NOW + (timedelta(days=3) if i == 150 else timedelta(days=200))
        write_keyfile(keys / f"k{i:04d}.json", key_id, principal(i), expires=expires)
    db = tmp / "keyd.db"
    upgrade(f"sqlite:///{db}")
    port = free_port()
    config = tmp / "keyd.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{db}"\n'
        f'[[sources]]\ntype = "directory"\npath = "{keys}"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    notes = Notifications(tmp / "notify.sock")
    proc = start_keyd(config, notes, tmp / "keyd.log")
    try:
        notes.wait_for("READY=1", timeout=60)
        yield f"http://127.0.0.1:{port}", tmp
    finally:
        stop(proc)
        notes.close()


@pytest.fixture(scope="module")
def browser(served: tuple[str, Path]) -> Iterator[Browser]:
    b = Browser(served[1])
    try:
        yield b
    finally:
        b.close()


PAGE_JS = """
var ids = function (sel) {
  return Array.from(document.querySelectorAll(sel + ' tbody tr')).map(function (tr) {
    return tr.dataset.keyId; }); };
var next = document.querySelector('a[rel="next"]');
return {keys: ids('#keys'), attention: ids('#attention'), next: next && next.href,
        marks: document.querySelectorAll('svg.timeline .mark').length,
        pwned: window.__pwned || null, images: document.images.length};"""


def test_next_links_reach_every_key_once(served: tuple[str, Path], browser: Browser) -> None:
    base, out = served
    url: str | None = base + "/"
    seen: list[str] = []
    pages = 0
    while url:
        browser.get(url)
        page = browser.run(PAGE_JS)
        assert 0 < len(page["keys"]) <= PAGE_SIZE
        assert page["attention"] == ["key-0150"]  # expiring in 3 days: on every page
        assert page["marks"] == len(set(page["keys"]) | {"key-0150"})
        assert page["pwned"] is None and page["images"] == 0
        seen += page["keys"]
        pages += 1
        if pages == 2:
            browser.screenshot(out / "status-page-2.png")
        url = page["next"]
    assert seen == IDS and pages == 3


def test_a_principal_link_lists_its_keys(served: tuple[str, Path], browser: Browser) -> None:
    base, _ = served
    browser.get(base + "/")
    href = browser.run(
        "var a = document.querySelector('#keys tr[data-key-id=\"key-0012\"] td[data-field=principal] a');"
        "return a.href;"
    )
    browser.get(href)
    page = browser.run(PAGE_JS)
    assert page["keys"] == [k for i, k in enumerate(IDS) if principal(i) == "svc-001"]
    hostile = browser.run(
        "var a = document.querySelector('#keys tr[data-key-id=\"key-0007\"] td[data-field=principal] a');"
        "return a ? [a.textContent, a.getAttribute('href')] : null;",
    )
    assert hostile is None  # not this principal's page
    browser.get(base + "/")
    text, link = browser.run(
        "var a = document.querySelector('#keys tr[data-key-id=\"key-0007\"] td[data-field=principal] a');"
        "return [a.textContent, a.getAttribute('href')];"
    )
    assert text == HOSTILE and link.startswith("/?principal=svc-%3Cimg")
    browser.get(base + link)
    page = browser.run(PAGE_JS)
    assert page["keys"] == ["key-0007"] and page["pwned"] is None and page["images"] == 0
