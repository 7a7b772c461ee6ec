"""The controller's scheduler: real APScheduler BackgroundScheduler, short intervals, real store."""

from __future__ import annotations

import threading
import time

from controller.rollout import RolloutSpec, create_rollout, get_rollout
from controller.scheduler.jobs import (
    DRIFT_CHECK,
    JOB_PROMOTION,
    QUALITY_AUDIT,
    ROLLOUT_TICK,
    Intervals,
    rollout_tick_hook,
    start_scheduler,
)
from controller.store.db import Store
from tests.fixtures.waiting import wait_for
from tests.unit.controller.rollout.fleet import Fleet


def test_hooks_run_periodically_and_survive_failures() -> None:
    calls = {"drift": 0, "dispatch": 0}
    dispatched: list[str] = []
    woke = threading.Event()

    def drift() -> None:
        calls["drift"] += 1
        raise RuntimeError("detector blew up")  # logged; the job keeps its schedule

    def dispatch() -> None:
        calls["dispatch"] += 1
        woke.set()

    scheduler = start_scheduler(
        rollout_tick=None,
        drift_check=drift,
        job_promotion=dispatch,
        intervals=Intervals(drift_check_s=0.05, job_promotion_s=3600),
    )
    try:
        assert scheduler.job_names() == sorted([DRIFT_CHECK, JOB_PROMOTION])
        assert wait_for(lambda: calls["drift"] >= 3), calls
        assert wait_for(lambda: calls["dispatch"] == 1)  # once at start, then hourly
        woke.clear()
        assert scheduler.wakeup(JOB_PROMOTION)
        assert woke.wait(5) and calls["dispatch"] == 2
        assert not scheduler.wakeup("no-such-job")
        scheduler.run_once("dispatch-one", dispatched.append, "job-7")
        assert wait_for(lambda: dispatched == ["job-7"])
    finally:
        scheduler.shutdown()
    assert not scheduler.running


def test_the_quality_audit_runs_on_its_own_interval() -> None:
    audits = threading.Event()
    scheduler = start_scheduler(rollout_tick=None, quality_audit=audits.set, intervals=Intervals(quality_audit_s=0.05))
    try:
        assert scheduler.job_names() == [QUALITY_AUDIT]
        assert audits.wait(5)
    finally:
        scheduler.shutdown()


def test_scheduled_rollout_tick_moves_a_rollout(sqlite_store: Store) -> None:
    fleet = Fleet(sqlite_store)
    fleet.model("m", "1", ["cpu-int4"])
    fleet.model("m", "2", ["cpu-int4"])
    for i in range(2):
        fleet.device(f"a{i}", "cpu-int4", installed="m:1")
    rid = create_rollout(sqlite_store, RolloutSpec("m", "2", waves=[50, 100], soak_s=0))
    scheduler = start_scheduler(rollout_tick=rollout_tick_hook(sqlite_store), intervals=Intervals(rollout_tick_s=3600))
    try:
        wave0 = [t.agent_id for t in get_rollout(sqlite_store, rid).targets if t.wave == 0]
        for agent in wave0:
            fleet.converge(agent, now=time.time())
        scheduler.wakeup(ROLLOUT_TICK)  # what the servicer does after an install report
        assert wait_for(lambda: get_rollout(sqlite_store, rid).current_wave == 1)
        wave1 = [t.agent_id for t in get_rollout(sqlite_store, rid).targets if t.wave == 1]
        for agent in wave1:
            fleet.converge(agent, now=time.time())
        scheduler.wakeup(ROLLOUT_TICK)
        assert wait_for(lambda: get_rollout(sqlite_store, rid).state == "SUCCEEDED")
    finally:
        scheduler.shutdown()


def test_wakeup_during_a_run_runs_the_job_again() -> None:
    entered, release = threading.Event(), threading.Event()
    runs: list[float] = []

    def slow_tick() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            entered.set()
            release.wait(5)

    scheduler = start_scheduler(rollout_tick=slow_tick, intervals=Intervals(rollout_tick_s=3600))
    try:
        assert entered.wait(5)
        assert scheduler.wakeup(ROLLOUT_TICK)  # APScheduler alone would skip this: one instance at a time
        release.set()
        # At least once more (APScheduler may add its own early run after the first ends; ticks are idempotent).
        assert wait_for(lambda: len(runs) >= 2), runs
    finally:
        scheduler.shutdown()
