"""shared/retry.py: capped, jittered delays from one wait strategy; a stop event ends a wait at once; only the
errors a policy retries are retried; every retry is logged naming the operation."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import pytest

from shared.retry import CONTROLLER_CALL, POLICIES, TRANSFER, Interrupted, Policy, Streak, describe


def _flaky(failures: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "ok"

    return calls, fn


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_delays_are_capped_and_jittered_within_bounds(name: str) -> None:
    policy = POLICIES[name].but(rng=random.Random(1234))
    lo, hi = policy.jitter
    ratios = set()
    for attempt in range(1, 40):
        nominal = min(policy.cap_s, policy.base_s * policy.multiplier ** (attempt - 1))
        delay = policy.delay(attempt)
        assert lo * nominal - 1e-9 <= delay <= min(policy.cap_s, hi * nominal) + 1e-9, (attempt, delay)
        ratios.add(round(delay / nominal, 6))
    assert len(ratios) > 5  # jittered, not a fixed factor
    assert policy.delay(200) <= policy.cap_s  # far past the cap (no overflow either)


def test_seeded_jitter_is_reproducible_and_the_wait_strategy_is_the_source() -> None:
    a = CONTROLLER_CALL.but(rng=random.Random(7))
    b = CONTROLLER_CALL.but(rng=random.Random(7))
    assert [a.delay(n) for n in range(1, 10)] == [b.delay(n) for n in range(1, 10)]
    exact = Policy("exact", base_s=0.5, cap_s=3.0, jitter=(1.0, 1.0))
    assert [exact.delay(n) for n in range(0, 6)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_transfer_jitter_above_one_is_still_capped() -> None:
    policy = TRANSFER.but(rng=random.Random(3))
    delays = [policy.delay(n) for n in range(8, 60)]
    assert max(delays) <= TRANSFER.cap_s and min(delays) >= 0.75 * TRANSFER.cap_s


def test_the_stop_event_interrupts_a_long_wait_promptly() -> None:
    stop = threading.Event()
    calls, fn = _flaky(10, ConnectionError("controller away"))
    policy = Policy("slow", base_s=60.0, cap_s=60.0, jitter=(1.0, 1.0))
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            policy.call(fn, "heartbeat", stop)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 0.5
    assert len(calls) == 1  # no further attempt once stopped


def test_an_error_that_is_not_retried_is_raised_at_once() -> None:
    calls, fn = _flaky(10, ValueError("bad request"))
    started = time.monotonic()
    with pytest.raises(ValueError, match="bad request"):
        Policy("p", base_s=60.0, cap_s=60.0).call(fn, "op", threading.Event(), retry_on=(ConnectionError,))
    assert len(calls) == 1 and time.monotonic() - started < 0.5


def test_the_last_error_is_raised_when_the_attempts_run_out() -> None:
    calls, fn = _flaky(10, ConnectionError("still away"))
    policy = Policy("p", base_s=0.001, cap_s=0.001, max_attempts=3)
    with pytest.raises(ConnectionError, match="still away"):
        policy.call(fn, "op", None)
    assert len(calls) == 3


def test_each_retry_is_logged_naming_the_operation_then_recovery(caplog: pytest.LogCaptureFixture) -> None:
    calls, fn = _flaky(2, ConnectionError("connection refused"))
    policy = Policy("p", base_s=0.001, cap_s=0.002)
    logger = logging.getLogger("tests.retry")
    with caplog.at_level(logging.INFO, logger="tests.retry"):
        assert policy.call(fn, "heartbeat", threading.Event(), logger=logger, recovered="reachable again") == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and len(calls) == 3
    for n, line in enumerate(warnings, 1):
        assert line.startswith("heartbeat: ConnectionError: connection refused; ") and f"retry {n} in 0.00" in line
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == ["heartbeat: reachable again"]


def test_a_first_time_success_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="shared.retry"):
        assert CONTROLLER_CALL.call(lambda: 5, "heartbeat", threading.Event(), recovered="reachable again") == 5
    assert not caplog.records


def test_a_streak_schedules_the_policys_delays_and_resets() -> None:
    streak = Streak(Policy("s", base_s=5.0, cap_s=12.0, jitter=(1.0, 1.0)))
    assert [streak.next_delay() for _ in range(4)] == [5.0, 10.0, 12.0, 12.0]
    streak.reset()
    assert streak.next_delay() == 5.0


def test_describe_gives_one_line() -> None:
    class Rpc(Exception):
        def code(self) -> object:
            return type("Code", (), {"name": "UNAVAILABLE"})()

        def details(self) -> str:
            return "failed to connect\nsecond line"

    assert describe(Rpc("multi\nline repr")) == "UNAVAILABLE: failed to connect"
    assert describe(ConnectionError()) == "ConnectionError"
    assert describe(None) == "no error"
