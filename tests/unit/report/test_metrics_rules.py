"""examples/prometheus-rules.yml only uses metrics keyd exports (a rename
in metrics.py must not silently disarm an alert)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from keyd.report import metrics

RULES = Path(__file__).resolve().parents[3] / "examples" / "prometheus-rules.yml"
EXPORTED = {
    "keyd_build_info",
    "keyd_leader",
    "keyd_last_tick_timestamp_seconds",
    "keyd_db_up",
    "keyd_key_expiration_timestamp_seconds",
    "keyd_key_status_code",
    "keyd_keys",
    "keyd_key_last_probe_success_oldest_timestamp_seconds",
    "keyd_keys_without_probe_success",
    "keyd_tokens",
    "keyd_token_expiration_earliest_timestamp_seconds",
    "keyd_key_last_probe_success_timestamp_seconds",
    "keyd_key_status",
    "keyd_token_expiration_timestamp_seconds",
    "keyd_source_errors_total",
    "keyd_alert_deliveries_unsent",
    "keyd_probe_duration_seconds",
    "keyd_locations",
    "keyd_probes_total",
    "keyd_token_state",
}


def test_rules_reference_exported_metrics_only() -> None:
    source = Path(metrics.__file__).read_text()
    for name in EXPORTED:  # each one is really defined in metrics.py
        base = name.removesuffix("_total").removesuffix("_info")
        assert f'"{base}"' in source or f'"{name}"' in source, name
    used = set(re.findall(r"\bkeyd_[a-z_]+\b", RULES.read_text()))
    assert used <= EXPORTED, used - EXPORTED
    alerts = re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M)
    assert {
        "KeydDown",
        "KeydNoLeader",
        "ZitadelKeyExpiresSoon",
        "ZitadelKeyRejected",
        "ZitadelKeyNoSuccessfulProbe",
        "KeydSourceErrors",
        "KeydAlertOutboxBacklog",
    } <= set(alerts)


def test_promtool_accepts_the_rules_when_available() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # optional tool; the structural test above always runs
        return
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
