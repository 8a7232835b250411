"""keyd.retry: full-jitter exponential backoff, injected sleep and rng."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyd.clock import FakeClock
from keyd.errors import IssuerRejected, IssuerUnavailable
from keyd.retry import backoff_ceiling, backoff_delay, retry_call


class FixedRng:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_ceiling_doubles_then_caps() -> None:
    assert [backoff_ceiling(n, 1, 10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert backoff_ceiling(10_000, timedelta(seconds=1), timedelta(hours=1)) == 3600


def test_delay_is_full_jitter() -> None:
    assert backoff_delay(3, 1.0, 300.0, FixedRng(0.0)) == 0.0
    assert backoff_delay(3, 1.0, 300.0, FixedRng(0.5)) == 2.0
    assert backoff_delay(3, 1.0, 300.0, FixedRng(0.999)) < 4.0


@given(attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_delay_never_exceeds_cap_or_goes_negative(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, 1.0, 300.0, random.Random(seed))
    assert 0.0 <= delay < 300.0


def test_attempt_zero_is_a_bug() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, 1, 1, FixedRng(0.5))


def test_retries_retryable_errors_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise IssuerUnavailable("https://issuer", "connection refused")
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="keyd.retry"):
        result = retry_call(
            flaky, attempts=5, base=1.0, cap=300.0, sleep=clock.sleep, rng=FixedRng(0.5), what="token request"
        )
    assert result == "ok"
    assert len(calls) == 3
    assert clock.slept == [0.5, 1.0]
    text = caplog.text
    assert "token request: attempt 1/5 failed" in text
    assert "token request: attempt 2/5 failed" in text
    assert "attempt 3/5" in text


def test_non_retryable_error_raises_at_once() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def rejected() -> None:
        calls.append(1)
        raise IssuerRejected("https://issuer", "invalid_grant")

    with pytest.raises(IssuerRejected):
        retry_call(rejected, attempts=5, base=1, cap=10, sleep=clock.sleep, rng=FixedRng(0.5))
    assert calls == [1]
    assert clock.slept == []


def test_gives_up_after_budget_and_reraises_last() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise IssuerUnavailable("https://issuer", f"timeout {len(calls)}")

    with pytest.raises(IssuerUnavailable, match="timeout 4"):
        retry_call(down, attempts=4, base=1, cap=2, sleep=clock.sleep, rng=FixedRng(0.5))
    assert len(calls) == 4
    assert clock.slept == [0.5, 1.0, 1.0]


def test_custom_retry_on() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def boom() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("reset")
        return 7

    assert (
        retry_call(
            boom,
            attempts=2,
            base=1,
            cap=1,
            sleep=clock.sleep,
            rng=FixedRng(0.0),
            retry_on=lambda exc: isinstance(exc, OSError),
        )
        == 7
    )


def test_log_lines_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"

    def leaky() -> None:
        raise OSError(f"server said {jwt}")

    with caplog.at_level(logging.DEBUG), pytest.raises(OSError):
        retry_call(
            leaky,
            attempts=2,
            base=1,
            cap=1,
            sleep=FakeClock().sleep,
            rng=FixedRng(0),
            retry_on=lambda exc: True,
        )
    assert jwt not in caplog.text
