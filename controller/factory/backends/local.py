"""The ``local`` task runner (the default): work runs in the job's own worker process, as it always has.

With one worker (the default) :meth:`LocalTaskRunner.submit` runs the callable at once in the calling thread
and returns a finished future: a stage gets its real context (progress and cancel callbacks are plain
functions) and pays nothing for the indirection. With ``max_workers > 1`` callables run on that many threads
(the ``search`` stage's trials; torch and onnxruntime release the GIL while they compute).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from controller.factory.backends.base import TaskRunner
from controller.factory.spec import Resources
from controller.factory.training.threads import available_cores


class LocalTaskRunner(TaskRunner):
    name = "local"

    def __init__(self, max_workers: int = 1) -> None:
        self.max_workers = max(1, int(max_workers))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, resources: Resources, **kwargs: Any) -> Future[Any]:
        if self.max_workers == 1:
            future: Future[Any] = Future()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller gets it from result(), as from a pool
                if not isinstance(exc, Exception):
                    raise
                future.set_exception(exc)
            return future
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="slmops-task")
            return self._pool.submit(fn, *args, **kwargs)

    def parallelism(self, resources: Resources) -> int:
        by_cpu = int(available_cores() // max(1.0, float(resources.num_cpus)))
        return max(1, min(self.max_workers, by_cpu))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
