"""/metrics as Prometheus tooling expects it: the format prometheus-client
negotiates (OpenMetrics when asked), gzip when accepted, process metrics,
invalid locations per source, sink state, probes by outcome, and every
series documented in docs/daemon.md."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import httpx
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from keyd.report.http import ObservabilityServer
from keyd.report.metrics import KeydMetrics
from keyd.store.models import KeyLocation, Rotation
from keyd.vocab import ProbeOutcome
from tests.unit.report.test_metrics import NOW, seed

DOCS = Path(__file__).resolve().parents[3] / "docs" / "daemon.md"
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def populated(engine: Engine, *, per_key: bool = True) -> KeydMetrics:
    seed(engine)
    with Session(engine) as s, s.begin():
        s.add_all(
            [
                KeyLocation(source="dir", ref="/k/a.json", status="present", first_seen=NOW, last_seen=NOW),
                Rotation(
                    old_key_id="k1",
                    principal="user-k1",
                    state="failed",
                    reason="due",
                    algorithm="RSA-2048",
                    planned_at=NOW,
                    updated_at=NOW,
                ),
                KeyLocation(
                    source="dir",
                    ref="/k/bad.json",
                    status="invalid",
                    first_seen=NOW,
                    last_seen=NOW,
                    last_error="is not valid JSON",
                ),
                KeyLocation(
                    source="dir",
                    ref="/k/unreadable.json",
                    status="invalid",
                    first_seen=NOW,
                    last_seen=NOW,
                    last_error="permission denied",
                ),
            ]
        )
    metrics = KeydMetrics(
        engine, version="0.1.0", leader=lambda: True, last_tick=lambda: NOW, per_key=per_key
    )
    metrics.observe_probe("ok", 0.2)
    metrics.observe_probe("unreadable", None)
    return metrics


def values(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_openmetrics_when_asked_text_otherwise(engine: Engine) -> None:
    metrics = populated(engine)
    body, content_type = metrics.render(PROMETHEUS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    names = {family.name for family in parse_openmetrics(text)}  # strict parser: valid OM
    assert {
        "keyd_build",
        "keyd_key_expiration_timestamp_seconds",
        "keyd_probes",
        "process_cpu_seconds",
        "keyd_locations",
    } <= names
    plain, plain_type = metrics.render(None)
    assert plain_type.startswith("text/plain; version=0.0.4")
    assert b"# EOF" not in plain
    assert metrics.render(PROMETHEUS_ACCEPT)[0].count(b"# EOF") == 1  # cached body, still one


def test_process_probes_locations_and_sink_state(engine: Engine) -> None:
    got = values(populated(engine).render()[0].decode())
    assert got[("process_resident_memory_bytes", frozenset())] > 0
    assert ("python_info", frozenset()) not in got  # python_info carries labels
    assert any(name == "python_info" for name, _ in got)
    for outcome in ProbeOutcome:
        expected = 1 if outcome in ("ok", "unreadable") else 0
        assert got[("keyd_probes_total", frozenset({("outcome", outcome)}))] == expected
    assert got[("keyd_probe_duration_seconds_count", frozenset())] == 1
    loc = {("source", "dir")}
    assert got[("keyd_locations", frozenset({*loc, ("status", "invalid")}))] == 2
    assert got[("keyd_locations", frozenset({*loc, ("status", "present")}))] == 1
    assert got[("keyd_locations", frozenset({*loc, ("status", "missing")}))] == 0
    sink = {("key_id", "k1"), ("principal", "user-k1"), ("sink", "secret/zitadel/tokens/user-k1")}
    assert got[("keyd_token_state", frozenset({*sink, ("state", "ok")}))] == 1
    assert got[("keyd_token_state", frozenset({*sink, ("state", "conflict")}))] == 0
    assert got[("keyd_tokens", frozenset({("state", "conflict")}))] == 0  # every state, from 0


def test_gzip_and_negotiation_over_http(engine: Engine) -> None:
    server = ObservabilityServer("127.0.0.1:0", populated(engine), lambda: (True, "ok"), lambda: (True, {}))
    server.start()
    host, port = server.address
    try:
        with (
            httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client,
            client.stream(
                "GET", "/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
            ) as r,
        ):
            wire = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == "gzip"
            assert r.headers["content-type"].startswith("application/openmetrics-text")
        assert gzip.decompress(wire).endswith(b"# EOF\n")
    finally:
        server.close()


def test_every_series_is_documented(engine: Engine) -> None:
    """Each family keyd exports (per-key detail included) has a row in the
    metrics table of docs/daemon.md."""
    body = populated(engine, per_key=True).render()[0].decode()
    exported = {
        f.name
        for f in text_string_to_metric_families(body)
        if not f.name.startswith(("process_", "python_")) and not f.name.endswith("_created")
    }
    table = DOCS.read_text()
    documented = set(re.findall(r"^\| `(keyd_[a-z_]+)(?:\{[^}]*\})?` \|", table, re.M))
    counters = {f"{n}_total" for n in exported}
    missing = {
        n
        for n in exported
        if n not in documented and f"{n}_total" not in documented and f"{n}_info" not in documented
    }
    assert missing == set(), missing
    stale = documented - exported - counters - {f"{n}_info" for n in exported}
    assert stale == set(), stale
    assert "process_" in table and "python_" in table
