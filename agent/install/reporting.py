"""Sending install transitions to the controller without ever blocking the install.

:class:`BufferedReporter` is the machine's ``report`` callback: it queues each transition and a background
thread sends them in order, retrying with backoff while the controller is away; when the buffer is full the
oldest transitions are dropped (and counted).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from agent.install.states import Transition

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
        self._closed = False
        self._initial, self._max = initial_backoff_s, max_backoff_s
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
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = self._initial
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed and not self._queue:
                    return
                item = self._queue[0]
            try:
                self._send(item)
            except Exception as exc:
                log.info("install report not delivered (%s); retrying in %.1f s", exc, backoff)
                with self._cond:
                    if self._cond.wait_for(lambda: self._closed, timeout=backoff):
                        return
                backoff = min(self._max, backoff * 2)
                continue
            backoff = self._initial
            with self._cond:
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                self.sent += 1
                self._cond.notify_all()
