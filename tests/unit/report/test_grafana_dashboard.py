"""examples/grafana/keyd.json only queries what keyd exports: every metric
and every label in every PromQL expression (and legend) is checked against
a real /metrics rendering, so a rename in metrics.py cannot silently blank
a panel (as test_metrics_rules.py does for the alert rules)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from tests.unit.report.test_metrics_conventions import populated

DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "grafana" / "keyd.json"
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every series
METRIC = re.compile(r"\b((?:keyd|process|python)_[a-z_]+)\b")
SELECTOR = re.compile(r"\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


@pytest.fixture
def exported(engine: Engine) -> dict[str, set[str]]:
    """Sample name -> its label names, from a full rendering (per-key detail on)."""
    body = populated(engine, per_key=True).render()[0].decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(expression, legend) of every panel target and templating query."""
    found = [
        (t["expr"], t.get("legendFormat", ""))
        for p in panels(dashboard["panels"])
        for t in p.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        found.append((query["query"] if isinstance(query, dict) else query, ""))
    return found


def test_every_expression_names_exported_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    checked = 0
    for expr, legend in queries(dashboard):
        metrics = set(METRIC.findall(expr))
        assert metrics, f"no keyd metric in {expr!r}"
        unknown = metrics - set(exported)
        assert not unknown, f"{expr!r} names {unknown}, which keyd does not export"
        labels = set().union(*(exported[m] for m in metrics)) | SCRAPE_LABELS
        used = {name for sel in SELECTOR.findall(expr) for name in MATCHER.findall(sel)}
        used |= {n.strip() for group in GROUPING.findall(expr) for n in group.split(",") if n.strip()}
        used |= set(LEGEND.findall(legend))
        assert used <= labels, f"{expr!r} / {legend!r} uses labels {used - labels}"
        checked += 1
    assert checked >= 15


def test_the_dashboard_covers_what_operators_look_at() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(expr for expr, _ in queries(dashboard))
    for metric in (
        "keyd_key_expiration_timestamp_seconds",
        "keyd_keys",
        "keyd_probes_total",
        "keyd_probe_duration_seconds_bucket",
        "keyd_alert_deliveries_unsent",
        "keyd_tokens",
        "keyd_leader",
        "keyd_source_errors_total",
        "keyd_locations",
    ):
        assert metric in text, metric


def test_dashboard_is_importable() -> None:
    """What Grafana's import needs: a datasource input every panel uses,
    unique panel ids, panels inside the 24-column grid."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
