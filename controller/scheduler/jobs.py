"""The controller's periodic jobs: their names and intervals, and each one bound to the app at start.

- ``rollout-tick``: advance every active rollout (waves, gates, rollback; ``controller.rollout.ticker``);
  the agent servicer wakes it early after an install report.
- ``drift-check``: run the drift detectors over new telemetry and act on events (``controller.drift.monitor``,
  actions from ``controller.loop.retrain``).
- ``quality-audit``: check a budgeted share of sampled answers with the teacher, for the profiles that opt in
  (``audit:``), and raise a quality drift when the estimated accuracy drops (``controller.loop.audit``).
- ``job-promotion``: roll out, as canaries, the versions that finished drift-triggered jobs published
  (``controller.loop.promotion``).

They run on :class:`~controller.scheduler.engine.ControllerScheduler`, and only on the leader replica: the
scheduler stays paused while :class:`~controller.scheduler.leader.LeaderElector` says another replica leads.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller.scheduler.engine import ControllerScheduler, Hook

if TYPE_CHECKING:
    from controller.core.app import ControllerApp

log = logging.getLogger(__name__)

ROLLOUT_TICK = "rollout-tick"
DRIFT_CHECK = "drift-check"
JOB_PROMOTION = "job-promotion"
QUALITY_AUDIT = "quality-audit"


@dataclass(frozen=True)
class Intervals:
    """Seconds between runs of each periodic job."""

    rollout_tick_s: float = 5.0
    drift_check_s: float = 60.0
    job_promotion_s: float = 2.0
    quality_audit_s: float = 60.0


def start_scheduler(
    *,
    rollout_tick: Hook | None,
    drift_check: Hook | None = None,
    job_promotion: Hook | None = None,
    quality_audit: Hook | None = None,
    intervals: Intervals = Intervals(),
    start: bool = True,
) -> ControllerScheduler:
    """Register the controller's periodic jobs (those given) and start the scheduler.

    Wire them like ``rollout_tick=rollout_tick_hook(store)``, ``drift_check=functools.partial(drift_step, app)``.
    """
    scheduler = ControllerScheduler()
    jobs = (
        (ROLLOUT_TICK, rollout_tick, intervals.rollout_tick_s),
        (DRIFT_CHECK, drift_check, intervals.drift_check_s),
        (JOB_PROMOTION, job_promotion, intervals.job_promotion_s),
        (QUALITY_AUDIT, quality_audit, intervals.quality_audit_s),
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


def drift_step(app: ControllerApp) -> None:
    from controller.drift.monitor import run_drift_check
    from controller.loop.retrain import LoopActions

    run_drift_check(app.store, app.catalog.all(), LoopActions(app))


def audit_step(app: ControllerApp) -> None:
    """Teacher-audited accuracy for the profiles that opt in (see controller/loop/audit.py)."""
    from controller.loop.audit_step import audit_step as run_audit_step

    run_audit_step(app)


def promotion_step(app: ControllerApp) -> None:
    """Promote finished drift-triggered builds to canary rollouts (see controller/loop/promotion.py)."""
    from controller.loop.promotion import promote_finished_jobs

    promote_finished_jobs(app)


def start_periodic_jobs(app: ControllerApp, address: str = "") -> ControllerScheduler:
    """Register the periodic jobs; they run only while this replica leads (controller/scheduler/leader.py)."""
    from controller.scheduler.leader import LeaderElector

    s = app.settings
    scheduler = start_scheduler(
        rollout_tick=rollout_tick_hook(app.store),
        drift_check=functools.partial(drift_step, app),
        job_promotion=functools.partial(promotion_step, app),
        quality_audit=functools.partial(audit_step, app),
        intervals=Intervals(
            rollout_tick_s=s.scheduler_interval_s,
            drift_check_s=s.drift_interval_s,
            job_promotion_s=s.scheduler_interval_s,
            quality_audit_s=s.drift_interval_s,
        ),
        start=False,
    )
    scheduler.start(paused=True)
    scheduler.elector = LeaderElector(
        app.store, s.replica_id, address, on_gain=scheduler.resume, on_loss=scheduler.pause
    ).start()
    app.scheduler = scheduler
    return scheduler
