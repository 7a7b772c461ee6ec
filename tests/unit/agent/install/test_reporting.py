"""The buffered reporter never blocks the install and delivers in order once the controller is back."""

from __future__ import annotations

import threading
import time

from agent.install.reporting import BufferedReporter
from agent.install.states import Event, ModelRef, State, Transition


def t(i: int) -> Transition:
    return Transition(State.DOWNLOAD, State.VERIFY, Event.OK, str(i), ModelRef("m", "v1"))


def test_buffers_while_the_controller_is_away_then_delivers_in_order():
    up = threading.Event()
    tried = threading.Event()  # the reporter tried (and failed) to send while the controller was away
    delivered: list[str] = []

    def send(tr: Transition) -> None:
        if not up.is_set():
            tried.set()
            raise ConnectionError("controller away")
        delivered.append(tr.message)

    reporter = BufferedReporter(send, initial_backoff_s=0.01, max_backoff_s=0.02)
    started = time.monotonic()
    for i in range(5):
        reporter(t(i))
    assert time.monotonic() - started < 0.1  # never waits for the controller
    assert tried.wait(5.0)
    assert delivered == [] and reporter.pending == 5
    up.set()
    assert reporter.flush(2.0)
    assert delivered == ["0", "1", "2", "3", "4"] and reporter.sent == 5
    reporter.close()


def test_full_buffer_drops_oldest():
    reporter = BufferedReporter(lambda tr: (_ for _ in ()).throw(ConnectionError()), maxlen=3, initial_backoff_s=5)
    for i in range(5):
        reporter(t(i))
    assert reporter.dropped == 2 and reporter.pending == 3
    reporter.close(0.5)
