"""The expiry timeline and the page frame: pure, from synthetic snapshots."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from keyd.exposure import Exposure
from keyd.report import web
from keyd.report.pages import IndexPage, render_index
from keyd.report.status import build_status
from keyd.report.timeline import LEFT, X_END, X_NOW, ZONE, render_timeline
from keyd.sources.keyfile import NEVER
from tests.unit.report.test_status import AT, key, loc, snapshot

SVG = "{http://www.w3.org/2000/svg}"
DAYS = [timedelta(days=d) for d in (30, 7, 1)]


def marks(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {c.attrib["data-key-id"]: c for c in root.iter(f"{SVG}circle")}


def test_one_mark_per_key_placed_by_expiry() -> None:
    snap = snapshot(
        key("past", AT - timedelta(days=400)),
        key("gone", AT - timedelta(seconds=1), "missing"),
        key("d1", AT + timedelta(hours=12)),
        key("d15", AT + timedelta(days=15)),
        key("late", AT + timedelta(days=3000)),
        key("never", NEVER),
        key("nodate", None),
    )
    found = marks(render_timeline(build_status(snap, AT, UTC), DAYS))
    assert set(found) == {"past", "gone", "d1", "d15", "late", "never", "nodate"}
    x = {k: float(c.attrib["cx"]) for k, c in found.items()}
    y = {k: float(c.attrib["cy"]) for k, c in found.items()}
    assert LEFT <= x["past"] < X_NOW and LEFT <= x["gone"] < X_NOW  # start zone
    assert X_END <= x["late"] <= X_END + ZONE  # pinned at the far end
    assert X_NOW < x["d1"] < x["d15"] < X_END
    assert x["d15"] == pytest.approx(X_NOW + (X_END - X_NOW) * 0.5, abs=0.1)
    assert y["never"] == y["nodate"] > max(y["past"], y["d1"], y["late"])  # own lane
    assert "undated" in found["never"].attrib["class"]
    assert "s-expired" in found["past"].attrib["class"].split()
    assert "s-missing" in found["gone"].attrib["class"].split()


def test_title_names_the_last_usable_day_in_the_zone() -> None:
    dies = datetime(2026, 5, 31, 22, 0, tzinfo=UTC)  # 2026-06-01 00:00 in Zurich
    svg = render_timeline(build_status(snapshot(key("k1", dies)), AT, ZoneInfo("Europe/Zurich")), DAYS)
    title = marks(svg)["k1"].find(f"{SVG}title")
    assert title is not None and title.text == (
        "k1 (svc-k1): active, expires 2026-05-31T22:00:00Z, last usable day 2026-05-31"
    )


def test_many_keys_on_one_day_all_get_marks() -> None:
    day = AT + timedelta(days=5)
    snap = snapshot(*(key(f"k{i}", day) for i in range(500)))
    found = marks(render_timeline(build_status(snap, AT, UTC), DAYS))
    assert len(found) == 500


def test_thresholds_are_bands() -> None:
    svg = render_timeline(build_status(snapshot(), AT, UTC), DAYS)
    root = ET.fromstring(svg)
    bands = [r for r in root.iter(f"{SVG}rect") if "band" in r.attrib["class"]]
    widths = [float(b.attrib["width"]) for b in bands]
    assert len(bands) == 3 and widths[0] < widths[1] < widths[2]  # 0-1d, 1-7d, 7-30d
    labels = [t.text for t in root.iter(f"{SVG}text") if t.attrib.get("class") == "threshold"]
    assert labels == ["1d", "7d", "30d"]


HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_everything_from_files_is_escaped() -> None:
    snap = snapshot(
        key(
            HOSTILE,
            AT + timedelta(days=3),
            principal=HOSTILE,
            locations=(
                loc(
                    HOSTILE, "invalid", error=HOSTILE, warnings=(Exposure(HOSTILE, HOSTILE),), key_id=HOSTILE
                ),
            ),
            last_error=HOSTILE,
        ),
        orphans=(loc("/k/" + HOSTILE, "invalid", error=HOSTILE, key_id=None),),
    )
    page = IndexPage(
        report=build_status(snap, AT, UTC),
        verdict="critical",
        summary=HOSTILE,
        thresholds=tuple(DAYS),
        tokens={},
        events=(),
        version="t",
    )
    html = render_index(page)
    assert "<script>alert" not in html and "<img" not in html
    assert html.count("<script>") == 1  # the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in html
    assert "/keys/%3Cscript%3Ealert%281%29" in html  # the link is percent-encoded
    ET.fromstring(render_timeline(page.report, DAYS))  # still well-formed XML


def _hex(value: str) -> tuple[float, float, float]:
    return tuple(int(value[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _luminance(color: str) -> float:
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in _hex(color)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_status_colors_contrast() -> None:
    """WCAG AA from the style sheet itself: 4.5:1 as text on the page,
    3:1 as a mark on every band and zone (non-text contrast)."""
    css = dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-f]{6})", web.STYLE))
    surfaces = [css[f"band-{i}"] for i in range(5)] + [css["zone"], css["bg"]]
    assert {f"s-{s}" for s in web.STATUSES} <= set(css)
    for status in web.STATUSES:
        color = css[f"s-{status}"]
        assert _contrast(color, css["bg"]) >= 4.5, status
        assert min(_contrast(color, s) for s in surfaces) >= 3.0, status


def test_csp_allows_exactly_the_inline_blocks() -> None:
    policy = web.CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert policy.count("'sha256-") == 2


def test_attention_lists_the_most_urgent_keys_first_and_the_listing_every_key_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from keyd.report import pages

    monkeypatch.setattr(pages, "ATTENTION_LIMIT", 2)
    snap = snapshot(
        key("a-fine", AT + timedelta(days=300)),
        key("b-soon", AT + timedelta(days=2)),
        key("c-dead", AT - timedelta(days=1)),
        key("d-later", AT + timedelta(days=9)),
        key("e-fine", AT + timedelta(days=200)),
    )
    page = IndexPage(
        report=build_status(snap, AT, UTC),
        verdict="critical",
        summary="s",
        thresholds=tuple(DAYS),
        tokens={},
        events=(),
        version="t",
    )
    html = render_index(page)
    attention, listing = html.split('<table id="attention"')[1].split('<table id="keys"')
    assert re.findall(r'<tr data-key-id="([^"]+)"', attention) == ["c-dead", "b-soon"]
    assert "The 2 most urgent of 3 keys that need attention" in attention
    rows = re.findall(r'<tr data-key-id="([^"]+)"', listing)
    assert rows == ["a-fine", "b-soon", "c-dead", "d-later", "e-fine"]  # the listing's order
    assert len(marks(render_timeline(page.report, DAYS))) == 5


def test_listing_links_pages_and_escapes_the_query() -> None:
    from keyd.report.pages import Listing

    snap = snapshot(key("k1", AT + timedelta(days=300)), key("k2", AT + timedelta(days=300)))
    page = IndexPage(
        report=build_status(snap, AT, UTC),
        verdict="ok",
        summary="s",
        thresholds=tuple(DAYS),
        tokens={},
        events=(),
        version="t",
        listing=Listing(after="k0", principal='p"&<x>', next_after="k2"),
    )
    html = render_index(page)
    assert '<a rel="next" href="/?principal=p%22%26%3Cx%3E&amp;after=k2">' in html
    assert 'p"&<x>' not in html and "of principal p&quot;&amp;&lt;x&gt;" in html


def test_status_classes_are_css_tokens() -> None:
    assert web.status_class("rejected (removed)") == "s-rejected"
    assert web.status_class('x"><script>') == "s-xscript"  # letters only: no markup
    assert web.status_class("unheld") == "s-unheld"
