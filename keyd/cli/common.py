"""Shared CLI plumbing: lazy config loading, JSON output, WHEN parsing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import click

from keyd.clock import Clock, SystemClock
from keyd.config import DEFAULT_CONFIG_PATH, Config
from keyd.errors import UsageError
from keyd.log import setup_logging
from keyd.timeutil import get_zone, parse_when


@dataclass
class AppContext:
    config_path: str | None = None
    debug: bool = False
    verbose: bool = False
    clock: Clock = field(default_factory=SystemClock)
    _config: Config | None = None

    def config(self) -> Config:
        """Load the config once (only commands that need it call this)."""
        if self._config is None:
            from keyd.config import load_config

            path = Path(self.config_path or os.environ.get("KEYD_CONFIG") or DEFAULT_CONFIG_PATH)
            self._config = load_config(path)
            setup_logging(self._config.log.format, self.log_level(self._config.log.level))
        return self._config

    def log_level(self, configured: str) -> str:
        """An interactive command says only what went wrong (WARNING and
        up) unless ``--verbose`` asks for the configured level (INFO by
        default) or ``--debug`` for everything. ``keyd run`` sets the
        configured level itself: the daemon's journal keeps INFO."""
        if self.debug:
            return "DEBUG"
        if self.verbose:
            return configured
        levels = logging.getLevelNamesMapping()
        return configured if levels[configured.upper()] > logging.WARNING else "WARNING"


def app(ctx: click.Context) -> AppContext:
    obj = ctx.find_object(AppContext)
    assert obj is not None
    return obj


def parse_at(value: str | None, tz: tzinfo, clock: Clock) -> datetime:
    """``--at WHEN``: RFC 3339 or a date (midnight rule, docs/zitadel.md §2)."""
    if value is None:
        return clock.now()
    try:
        return parse_when(value, tz)
    except ValueError as exc:
        raise UsageError("--at", str(exc)) from None


def parse_tz(value: str) -> tzinfo:
    try:
        return get_zone(value)
    except ValueError as exc:
        raise UsageError("--tz", str(exc)) from None


def echo_json(schema: str, body: Mapping[str, Any]) -> None:
    """Print one ``--json`` document, ``{"schema": schema, **body}``. Every
    --json output goes through here, so each carries its schema id (listed
    with its fields in docs/json.md); timestamps in ``body`` are already
    RFC 3339 UTC with ``Z`` (``keyd.timeutil.isoformat_z``)."""
    data = {"schema": schema, **body}
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
