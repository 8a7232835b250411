"""Shared CLI plumbing: lazy config loading, JSON output, WHEN parsing."""

from __future__ import annotations

import json
import os
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
    clock: Clock = field(default_factory=SystemClock)
    _config: Config | None = None

    def config(self) -> Config:
        """Load the config once (only commands that need it call this)."""
        if self._config is None:
            from keyd.config import load_config

            path = Path(self.config_path or os.environ.get("KEYD_CONFIG") or DEFAULT_CONFIG_PATH)
            self._config = load_config(path)
            setup_logging(self._config.log.format,
                          "DEBUG" if self.debug else self._config.log.level)
        return self._config


def app(ctx: click.Context) -> AppContext:
    obj = ctx.find_object(AppContext)
    assert obj is not None
    return obj


def parse_at(value: str | None, tz: tzinfo, clock: Clock) -> datetime:
    """``--at WHEN``: RFC 3339 or a date (midnight rule, ZITADEL.md §2)."""
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


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
