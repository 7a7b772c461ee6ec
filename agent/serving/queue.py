"""Bounded admission queue with a fixed pool of worker threads.

Generation is blocking native code, so it runs on these threads, never on the event loop. Capacity is
``workers`` running + ``max_queue`` waiting; a submit beyond that raises :class:`QueueFull` at once (the HTTP
layer answers 429 with Retry-After) instead of letting requests pile up. A job whose ``cancel`` event is set
before a worker picks it up is skipped; a running job is expected to watch the same event.

A new job goes to the worker that became idle last (LIFO), not to whichever thread wakes first: one-at-a-time
traffic keeps running on one warm thread (its malloc arena, onnxruntime's per-thread buffers, its CPU cache)
instead of alternating between the pool's threads.

Note (onnxruntime-genai 0.18): ``Generator.generate_next_token`` holds the GIL while it computes, so worker
threads of one process take turns rather than generate in parallel (each generation already uses every core
through onnxruntime's intra-op threads on CPU), and the event loop gets the GIL only when a worker gives it up.
Streaming therefore batches tokens per SSE chunk (``stream_interval_ms``) to keep loop wake-ups few, and the
worker hands the GIL to the loop for each chunk (``EventChannel`` ``handoff_s``) rather than leaving it to
CPython's forced 5 ms switches.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.serving.errors import QueueFull

log = logging.getLogger(__name__)


@dataclass
class Job:
    run: Callable[[Job], None]
    cancel: threading.Event
    # Called instead of ``run`` when the job was cancelled while waiting (e.g. the client went away).
    on_skip: Callable[[Job], None] | None = None
    # Set by ``run``/``on_skip``: called once the worker is accounted free (hand the answer over here, so a
    # client that sends its next request at once finds its slot free, and the worker is done with the GIL).
    then: Callable[[], None] | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def queue_wait_s(self) -> float:
        return self.started_at - self.enqueued_at if self.started_at is not None else 0.0


_STOP = object()


class _Worker:
    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # a job handed over, or _STOP


class WorkQueue:
    def __init__(self, workers: int = 2, max_queue: int = 16, name: str = "serving") -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.workers, self.max_queue = workers, max_queue
        self._lock = threading.Lock()
        self._waiting: deque[Job] = deque()  # jobs no idle worker could take yet (FIFO)
        self._idle_workers: list[_Worker] = []  # the last one to become idle takes the next job
        self._pending = 0  # submitted and not finished (waiting + running)
        self._running = 0
        self._service_s = 1.0  # EWMA of job duration, for Retry-After
        self._idle = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._loop, args=(_Worker(),), name=f"{name}-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        self._stopped = False
        for t in self._threads:
            t.start()

    # --- figures --------------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.workers + self.max_queue

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker."""
        with self._lock:
            return self._pending - self._running

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def retry_after_s(self) -> int:
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        """Seconds until a slot is likely free: mean job time x the waves of jobs ahead."""
        waves = (self._pending + 1 - self.capacity) / self.workers
        return max(1, math.ceil(self._service_s * max(waves, 1.0)))

    # --- use --------------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the work queue is stopped")
            if self._pending >= self.capacity:
                raise QueueFull(self._pending, self._retry_after_locked())
            self._pending += 1
            job.enqueued_at = time.perf_counter()
            worker = self._idle_workers.pop() if self._idle_workers else None
            if worker is None:
                self._waiting.append(job)
        if worker is not None:
            worker.inbox.put(job)
        return job

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is waiting or running."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting jobs' admission, let running ones finish (they should honour their cancel events)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            idle, self._idle_workers = self._idle_workers, []
        for worker in idle:  # busy workers run what is waiting, then see the flag
            worker.inbox.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # --- workers ----------------------------------------------------------------------------------------------
    def _loop(self, me: _Worker) -> None:
        with self._lock:
            item: object = self._next_locked(me)
        while True:
            if item is None:
                item = me.inbox.get()
            if item is _STOP:
                return
            assert isinstance(item, Job)
            item = self._run_one(item, me)

    def _next_locked(self, me: _Worker) -> Job | object | None:
        """The next waiting job; else _STOP when stopping; else None, with ``me`` registered idle."""
        if self._waiting:
            return self._waiting.popleft()
        if self._stopped:
            return _STOP
        self._idle_workers.append(me)
        return None

    def _run_one(self, job: Job, me: _Worker) -> Job | object | None:
        """Run ``job``; return what this worker does next (see :meth:`_next_locked`)."""
        with self._lock:
            self._running += 1
        job.started_at = time.perf_counter()
        try:
            if job.cancel.is_set():
                if job.on_skip is not None:
                    job.on_skip(job)
            else:
                job.run(job)
        except Exception:
            log.exception("a serving job failed outside its own error handling")
        finally:
            job.finished_at = time.perf_counter()
            with self._lock:
                self._running -= 1
                self._pending -= 1
                self._service_s = 0.8 * self._service_s + 0.2 * (job.finished_at - job.started_at)
                if self._pending == 0:
                    self._idle.notify_all()
                # idle (or given the next job) before the answer goes out: the client's next request finds
                # this warm worker
                following = self._next_locked(me)
            if job.then is not None:
                try:
                    job.then()
                except Exception:
                    log.exception("a serving job's completion callback failed")
        return following
