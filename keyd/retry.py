"""The one retry/backoff helper for all of keyd (docs/architecture.md rule 9).

Two uses, one formula:

* *fast* retries inside a tick: ``retry_call`` runs a callable up to
  ``attempts`` times, sleeping a full-jitter exponential delay between
  attempts through an injected ``sleep`` (``Clock.sleep``), so tests never
  wait for real time;
* *slow* retries across ticks (the e-mail outbox, per-key probe backoff):
  the caller persists the attempt count and asks ``backoff_delay`` for the
  next due time.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
``delay = uniform(0, min(cap, base * 2 ** (attempt - 1)))``. It spreads a
fleet of daemons that failed together instead of making them retry in
lock-step. Randomness is injected (``rng.random()`` in ``[0, 1)``) so tests
are deterministic.

Only errors that say ``retryable`` (``KeydError.retryable``) are retried by
default: retrying a rejected key or a wrong password cannot help. Each
attempt is logged with its number; messages never include secrets (keyd
errors never carry them; other exception text is scrubbed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol, TypeVar

from keyd.redact import scrub

log = logging.getLogger(__name__)

T = TypeVar("T")


class Random(Protocol):
    """What we need from randomness: ``random.Random`` satisfies it."""

    def random(self) -> float:
        """A float in ``[0, 1)``."""


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


def backoff_ceiling(attempt: int, base: float | timedelta, cap: float | timedelta) -> float:
    """The upper bound of the delay after failed attempt ``attempt`` (1-based):
    ``min(cap, base * 2 ** (attempt - 1))`` seconds. Never overflows."""
    base_s, cap_s = _seconds(base), _seconds(cap)
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if base_s <= 0 or cap_s <= 0:
        return 0.0
    exponent = min(attempt - 1, 62)  # 2**62 * base is past any sane cap
    return min(cap_s, base_s * float(2**exponent))


def backoff_delay(attempt: int, base: float | timedelta, cap: float | timedelta, rng: Random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): full jitter,
    uniformly in ``[0, min(cap, base * 2 ** (attempt - 1)))``."""
    return rng.random() * backoff_ceiling(attempt, base, cap)


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    base: float | timedelta,
    cap: float | timedelta,
    sleep: Callable[[float], None],
    rng: Random,
    retry_on: Callable[[BaseException], bool] = _is_retryable,
    what: str = "operation",
) -> T:
    """Call ``fn`` until it succeeds, at most ``attempts`` times.

    After a failure for which ``retry_on(exc)`` is true and attempts remain,
    sleep ``backoff_delay(n, base, cap, rng)`` via ``sleep`` and try again.
    The last exception (or the first non-retryable one) is re-raised
    unchanged, so callers keep branching on its type. ``what`` names the operation in the log lines.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    attempt = 1
    while True:
        log.debug("%s: attempt %d/%d", what, attempt, attempts)
        try:
            return fn()
        except Exception as exc:
            delay = next_attempt_in(exc, attempt, attempts, base, cap, rng, retry_on=retry_on, what=what)
            if delay is None:
                raise
            sleep(delay)
            attempt += 1


def next_attempt_in(
    exc: BaseException,
    attempt: int,
    attempts: int,
    base: float | timedelta,
    cap: float | timedelta,
    rng: Random,
    *,
    retry_on: Callable[[BaseException], bool] = _is_retryable,
    what: str = "operation",
) -> float | None:
    """After attempt ``attempt`` of ``attempts`` failed with ``exc``: the
    seconds to wait before the next one, or None to give up (logged either
    way). ``retry_call``'s decision, for callers that wait by scheduling
    rather than by sleeping (a multiplexed probe round)."""
    if attempt >= attempts or not retry_on(exc):
        log.warning("%s: attempt %d/%d failed, giving up: %s", what, attempt, attempts, _describe(exc))
        return None
    delay = backoff_delay(attempt, base, cap, rng)
    log.info(
        "%s: attempt %d/%d failed (%s); retrying in %.2fs", what, attempt, attempts, _describe(exc), delay
    )
    return delay


def _describe(exc: BaseException) -> str:
    """Type and scrubbed text: safe for a log line."""
    return f"{type(exc).__name__}: {scrub(str(exc))}"
