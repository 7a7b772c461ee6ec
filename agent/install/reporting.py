"""Sending install transitions to the controller without ever blocking the install.

:class:`BufferedReporter` is the machine's ``report`` callback: it queues each transition and a background
thread sends them in order, retrying with the REPORT backoff (shared/retry.py) while the controller is away;
when the buffer is full the oldest transitions are dropped (and counted). ``close()`` ends a retry's wait at once.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable

from agent.install.states import Transition
from shared.retry import REPORT, Interrupted

log = logging.getLogger(__name__)


class BufferedReporter:
    def __init__(
        self,
        send: Callable[[Transition], None],
        maxlen: int = 1000,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._send = send
        self._queue: collections.deque[Transition] = collections.deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._policy = REPORT.but(base_s=initial_backoff_s, cap_s=max_backoff_s)
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="install-reporter", daemon=True)
        self._thread.start()

    def __call__(self, transition: Transition) -> None:
        with self._cond:
            if len(self._queue) >= self._maxlen:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(transition)
            self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued was sent; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout=timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        with self._cond:
            self._closed.set()
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._policy.call(functools.partial(self._send, item), "install report", self._closed, logger=log)
            except Interrupted:  # closed while the controller was away
                return
            with self._cond:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                self.sent += 1
                self._cond.notify_all()

    def _next(self) -> Transition | None:
        """The oldest queued transition (it stays queued until sent); None once closed with nothing queued."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed.is_set())
            return self._queue[0] if self._queue else None
