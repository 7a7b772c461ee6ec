"""agent.client.retry_unavailable on the CONTROLLER_CALL policy: UNAVAILABLE is retried until the stop event,
other errors are raised at once, recovery is logged."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from agent.client import retry_unavailable
from shared.errors import Unauthenticated, Unavailable
from shared.retry import CONTROLLER_CALL

FAST = CONTROLLER_CALL.but(base_s=0.001, cap_s=0.002)


def test_unavailable_is_retried_and_recovery_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    results = iter([Unavailable("connection refused"), Unavailable("connection refused"), "beat"])

    def fn() -> str:
        item = next(results)
        if isinstance(item, Exception):
            raise item
        return item

    with caplog.at_level(logging.INFO, logger="agent.client"):
        assert retry_unavailable(fn, threading.Event(), FAST, "heartbeat") == "beat"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.WARNING, logging.WARNING, logging.INFO]
    assert all(msg.startswith("heartbeat: ") for _, msg in lines)
    assert "connection refused" in lines[0][1] and lines[2][1] == "heartbeat: controller reachable again"


def test_a_set_stop_event_ends_the_retry_without_raising() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise Unavailable("controller away")

    timer = threading.Timer(0.1, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        assert retry_unavailable(fn, stop, CONTROLLER_CALL.but(base_s=60.0), "heartbeat") is None
    finally:
        timer.cancel()
    assert time.monotonic() - started < 0.5 and len(calls) == 1
    assert retry_unavailable(fn, stop, FAST, "heartbeat") is None and len(calls) == 1  # already stopped: no call


def test_a_refusal_is_raised_at_once() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise Unauthenticated("bad secret")

    with pytest.raises(Unauthenticated):
        retry_unavailable(fn, threading.Event(), FAST, "heartbeat")
    assert len(calls) == 1
