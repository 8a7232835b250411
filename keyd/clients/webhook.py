"""Webhook channel: POST the alert facts as JSON.

One ``httpx.Client``; ``timeout`` is the total deadline of a POST
(connect + send + the whole answer, ``keyd.clients.deadline``); tests
inject ``httpx.MockTransport``. Failures are ``WebhookError``: retryable for
connection errors, timeouts, 408/429 and 5xx; not for other 4xx (the
outbox still retries those, only less often). Webhook URLs often embed a
secret (Slack, Teams), so messages and the outbox show only
``scheme://host/…`` (``keyd.urls.display_url``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

import httpx

from keyd.clients.deadline import deadline_client, within
from keyd.config import WebhookConfig
from keyd.errors import EXIT_UNAVAILABLE, KeydError
from keyd.urls import display_url

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429})


class WebhookError(KeydError):
    """A webhook POST failed; ``status`` is the HTTP status if there was one."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, url: str, problem: str, *, status: int | None = None, retryable: bool = True) -> None:
        self.url = url
        self.status = status
        self.retryable = retryable
        super().__init__(f"webhook {url}: {problem}")


class WebhookSender(Protocol):
    def post(self, payload: Mapping[str, Any]) -> None:
        """POST ``payload`` as JSON; raise ``WebhookError``."""


class WebhookClient:
    """POSTs JSON to ``WebhookConfig.url``; use as a context manager."""

    def __init__(self, config: WebhookConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self.display = display_url(config.url)
        self._client = deadline_client(
            timeout=config.timeout.total_seconds(),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": "keyd"},
        )

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def post(self, payload: Mapping[str, Any]) -> None:
        seconds = self.config.timeout.total_seconds()
        try:
            with within(seconds, f"webhook {self.display}") as deadline:
                response = self._client.post(self.config.url, json=dict(payload))
                deadline.clamp(None)
        except (httpx.TimeoutException, TimeoutError):
            raise WebhookError(self.display, f"no complete answer within {seconds:g}s") from None
        except httpx.HTTPError as exc:
            raise WebhookError(self.display, f"cannot connect ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status in RETRYABLE_STATUS
        raise WebhookError(self.display, f"answered HTTP {status}", status=status, retryable=retryable)
