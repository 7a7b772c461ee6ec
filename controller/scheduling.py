"""The controller's periodic jobs, on one APScheduler 3.x ``BackgroundScheduler``.

Registered at controller start: the rollout tick, the device offline sweep, the drift check and the job
dispatcher. Each is a plain callable with no arguments (bind its store/handles with ``functools.partial``);
the scheduler calls it through the module-level :func:`run_hook`, which logs failures so one bad run does
not stop later ones. Jobs live in memory only: what they act on lives in the database, so a restarted
controller re-registers them and carries on (each runs once right at start).

Every job has ``max_instances=1`` and ``coalesce=True``: a slow run is never overlapped by the next one of
the same job, and missed runs collapse into one. Different jobs run in parallel on a small thread pool.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

Hook = Callable[[], object]
_MAX_RERUNS = 5

ROLLOUT_TICK = "rollout-tick"
OFFLINE_SWEEP = "device-offline-sweep"
DRIFT_CHECK = "drift-check"
JOB_DISPATCH = "job-dispatch"


@dataclass(frozen=True)
class Intervals:
    """Seconds between runs of each periodic job."""

    rollout_tick_s: float = 5.0
    offline_sweep_s: float = 15.0
    drift_check_s: float = 60.0
    job_dispatch_s: float = 2.0


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

    def start(self) -> None:
        if not self._scheduler.running:
            self._scheduler.start()
            log.info("scheduler started: %s", ", ".join(self.job_names()) or "no jobs")

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
            log.info("scheduler stopped")


def start_scheduler(
    *,
    rollout_tick: Hook | None,
    offline_sweep: Hook | None = None,
    drift_check: Hook | None = None,
    job_dispatch: Hook | None = None,
    intervals: Intervals = Intervals(),
    start: bool = True,
) -> ControllerScheduler:
    """Register the controller's periodic jobs (those given) and start the scheduler.

    Wire them like ``rollout_tick=rollout_tick_hook(store)``,
    ``offline_sweep=functools.partial(sweep_offline, store)``.
    """
    scheduler = ControllerScheduler()
    jobs = (
        (ROLLOUT_TICK, rollout_tick, intervals.rollout_tick_s),
        (OFFLINE_SWEEP, offline_sweep, intervals.offline_sweep_s),
        (DRIFT_CHECK, drift_check, intervals.drift_check_s),
        (JOB_DISPATCH, job_dispatch, intervals.job_dispatch_s),
    )
    for name, hook, every_s in jobs:
        if hook is not None:
            scheduler.add_interval(name, hook, every_s)
    if start:
        scheduler.start()
    return scheduler


def rollout_tick_hook(store: Any, gate_metrics: Callable[..., dict[str, Any]] | None = None) -> Hook:
    """The rollout tick bound to a store (and optionally a gate-metrics function)."""
    from controller.rollout.ticker import tick

    return functools.partial(tick, store, gate_metrics=gate_metrics)
