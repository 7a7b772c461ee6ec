"""The controller's periodic work, registered with the scheduler at start (jobs bound to the app here)."""

from __future__ import annotations

import functools
import logging

from controller.app import ControllerApp
from controller.scheduling import ControllerScheduler, Intervals, rollout_tick_hook, start_scheduler

log = logging.getLogger(__name__)


def drift_check(app: ControllerApp) -> None:
    from controller.drift.monitor import run_drift_check
    from controller.loop import LoopActions

    run_drift_check(app.store, app.catalog.all(), LoopActions(app))


def loop_step(app: ControllerApp) -> None:
    """Promote finished drift-triggered builds to canary rollouts (see controller/loop.py)."""
    from controller.loop import promote_finished_jobs

    promote_finished_jobs(app)


def start_periodic_jobs(app: ControllerApp) -> ControllerScheduler:
    s = app.settings
    scheduler = start_scheduler(
        rollout_tick=rollout_tick_hook(app.store),
        drift_check=functools.partial(drift_check, app),
        job_dispatch=functools.partial(loop_step, app),
        intervals=Intervals(
            rollout_tick_s=s.scheduler_interval_s,
            drift_check_s=s.drift_interval_s,
            job_dispatch_s=s.scheduler_interval_s,
        ),
    )
    app.scheduler = scheduler
    return scheduler
