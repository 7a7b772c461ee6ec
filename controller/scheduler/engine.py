"""The scheduler the controller's periodic jobs run on: one APScheduler 3.x ``BackgroundScheduler``.

Each job is a plain callable with no arguments (bind its store/handles with ``functools.partial``); the
scheduler calls it through the module-level :func:`run_hook`, which logs failures so one bad run does not stop
later ones. Jobs live in memory only: what they act on lives in the database, so a restarted controller
re-registers them and carries on (each runs once right at start). Which jobs exist is :mod:`controller.scheduler.jobs`.

Every job has ``max_instances=1`` and ``coalesce=True``: a slow run is never overlapped by the next one of
the same job, and missed runs collapse into one. Different jobs run in parallel on a small thread pool.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

Hook = Callable[[], object]
_MAX_RERUNS = 5


def run_hook(name: str, hook: Hook, again: threading.Event | None = None) -> None:
    """Run one scheduled job; an exception is logged (with traceback) and the next run tries again.

    ``again`` is set by :meth:`ControllerScheduler.wakeup`; a wake-up that arrives while the job runs makes
    it run once more right after (APScheduler would skip that run: one instance at a time).
    """
    for _ in range(_MAX_RERUNS):
        if again is not None:
            again.clear()
        started = time.monotonic()
        try:
            hook()
        except Exception:
            log.exception("scheduled job %s failed after %.2f s", name, time.monotonic() - started)
        else:
            log.debug("scheduled job %s ran in %.3f s", name, time.monotonic() - started)
        if again is None or not again.is_set():
            return


class ControllerScheduler:
    """A thin wrapper that names the controller's jobs and lets callers wake one early."""

    def __init__(self, workers: int = 4) -> None:
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._again: dict[str, threading.Event] = {}
        # Set by start_periodic_jobs: the leader election that resumes / pauses this scheduler.
        self.elector: Any = None

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def add_interval(self, name: str, hook: Hook, every_s: float, run_at_start: bool = True) -> None:
        """Run ``hook`` every ``every_s`` seconds (and once right away unless ``run_at_start`` is False)."""
        if every_s <= 0:
            raise ValueError(f"interval of job {name} must be > 0 s, got {every_s}")
        first = datetime.now(UTC) if run_at_start else datetime.now(UTC) + timedelta(seconds=every_s)
        self._scheduler.add_job(
            run_hook,
            "interval",
            args=[name, hook, self._again.setdefault(name, threading.Event())],
            seconds=every_s,
            id=name,
            name=name,
            replace_existing=True,
            next_run_time=first,
        )

    def run_once(self, name: str, func: Callable[..., Any], *args: Any, delay_s: float = 0.0) -> None:
        """Run ``func(*args)`` once after ``delay_s`` (e.g. dispatch one job now); failures are logged."""
        when = datetime.now(UTC) + timedelta(seconds=delay_s)
        self._scheduler.add_job(run_hook, "date", args=[name, functools.partial(func, *args)], run_date=when, name=name)

    def wakeup(self, name: str) -> bool:
        """Make the periodic job ``name`` run now (e.g. the rollout tick after an install report)."""
        job = self._scheduler.get_job(name)
        if job is None:
            return False
        self._again[name].set()
        job.modify(next_run_time=datetime.now(UTC))
        return True

    def job_names(self) -> list[str]:
        return sorted(job.id for job in self._scheduler.get_jobs())

    def start(self, paused: bool = False) -> None:
        """Start the scheduler; ``paused``: no job runs until :meth:`resume` (a replica that does not lead)."""
        if not self._scheduler.running:
            self._scheduler.start(paused=paused)
            state = "paused until this replica leads" if paused else "started"
            log.info("scheduler %s: %s", state, ", ".join(self.job_names()) or "no jobs")

    def pause(self) -> None:
        """No job starts until :meth:`resume` (runs in progress finish)."""
        if self._scheduler.running:
            self._scheduler.pause()
            log.info("scheduler paused")

    def resume(self) -> None:
        """Run the jobs again; those that came due while paused run now (once each)."""
        if self._scheduler.running:
            self._scheduler.resume()
            log.info("scheduler resumed: %s", ", ".join(self.job_names()) or "no jobs")

    def shutdown(self, wait: bool = True) -> None:
        if self.elector is not None:
            self.elector.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
            log.info("scheduler stopped")
