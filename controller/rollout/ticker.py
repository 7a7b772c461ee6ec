"""The scheduled rollout job: per ACTIVE rollout, time out devices, judge the current wave, move on.

A wave is done when each of its devices is terminal (healthy, failed, rolled back). Then:

- failed share > max_failure: the rollout pauses and the wave is rolled back;
- else the wave is "installed" (``wave_installed_at``) and soaks: after ``soak_s`` the gates, evaluated on
  the wave's healthy devices' telemetry since then, must hold: the next wave starts (or the rollout waits
  for approval, or succeeds after the last wave). No telemetry yet: it keeps waiting. A violated gate is
  treated like a failure (pause + roll back the wave).

Everything it needs is in the database, so a restarted controller continues where it stopped; each
change is a compare-and-set, so two ticks at once apply it once.
"""

from __future__ import annotations

import logging
import time

from sqlmodel import Session, col, select

from controller.registry.integrity import describe, problems_of
from controller.store.db import Store
from controller.store.tables import Rollout, RolloutTarget

from .gates import GateMetricsFn, GateVerdict, default_gate_metrics, evaluate, parse_gate
from .planner import next_wave_with_targets
from .spec import ACTIVE, FAILED, HEALTHY, IN_FLIGHT, PAUSED, SKIPPED, SUCCEEDED, TERMINAL, WAITING_APPROVAL
from .transitions import cas_rollout, roll_back_targets, set_target_state, start_wave, targets_of, waves_of

log = logging.getLogger(__name__)


def tick(store: Store, now: float | None = None, gate_metrics: GateMetricsFn | None = None) -> list[str]:
    """Advance every ACTIVE rollout by what is due now; returns the ids of rollouts whose state changed."""
    now = time.time() if now is None else now
    metrics_fn = gate_metrics or default_gate_metrics()
    with store.session() as session:
        ids = list(session.exec(select(Rollout.rollout_id).where(Rollout.state == ACTIVE)).all())
    changed = []
    for rollout_id in ids:
        try:
            with store.session() as session:
                if _tick_one(store, session, rollout_id, now, metrics_fn):
                    changed.append(rollout_id)
        except Exception:  # one broken rollout must not stop the others
            log.exception("rollout tick failed for %s", rollout_id)
    return changed


def _wave_label(rollout: Rollout) -> str:
    return f"wave {rollout.current_wave + 1} of {len(waves_of(rollout))}"


def _note(session: Session, rollout: Rollout, message: str, now: float) -> None:
    if message != rollout.message:
        cas_rollout(session, rollout, message=message, updated_at=now)


def _time_out(session: Session, rollout: Rollout, now: float) -> int:
    """Targets of started waves that were assigned longer than device_timeout_s ago become failed."""
    overdue = session.exec(
        select(RolloutTarget).where(
            RolloutTarget.rollout_id == rollout.rollout_id,
            col(RolloutTarget.state).in_(IN_FLIGHT),
            RolloutTarget.wave <= rollout.current_wave,
            RolloutTarget.assigned_at < now - rollout.device_timeout_s,
        )
    ).all()
    count = 0
    for target in overdue:
        msg = f"timed out: not healthy within {rollout.device_timeout_s} s (last state: {target.state})"
        if set_target_state(session, target, FAILED, msg, now):
            count += 1
            log.warning("rollout %s: device %s %s", rollout.rollout_id, target.agent_id, msg)
    return count


def _tick_one(store: Store, session: Session, rollout_id: str, now: float, metrics_fn: GateMetricsFn) -> bool:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or rollout.state != ACTIVE:
        return False
    _time_out(session, rollout, now)
    wave = [t for t in targets_of(session, rollout_id, rollout.current_wave) if t.state != SKIPPED]
    label = _wave_label(rollout)
    healthy = [t.agent_id for t in wave if t.state == HEALTHY]
    failed = sum(1 for t in wave if t.state == FAILED)
    busy = sum(1 for t in wave if t.state not in TERMINAL)
    counts = f"{len(healthy)} healthy, {failed} failed"
    if busy:
        _note(session, rollout, f"{label}: {counts}, {busy} installing", now)
        return False
    if wave and failed / len(wave) > rollout.max_failure:
        why = f"{failed} of {len(wave)} device(s) failed ({failed / len(wave):.0%} > max {rollout.max_failure:.0%})"
        return _pause_and_roll_back(session, rollout, now, f"{label} rolled back: {why}")
    if not rollout.wave_installed_at and not cas_rollout(session, rollout, wave_installed_at=now, updated_at=now):
        return False
    clauses = parse_gate(rollout.gate)
    verdict = GateVerdict(ok=True, missing=[], violated=[])
    if clauses and healthy:
        metrics = metrics_fn(store, healthy, rollout.model_name, rollout.model_version, rollout.wave_installed_at)
        verdict = evaluate(clauses, metrics)
    if now - rollout.wave_installed_at < rollout.soak_s:
        so_far = ""
        if clauses and healthy:
            so_far = " (so far: " + (
                "waiting for telemetry)"
                if verdict.waiting
                else ("gates hold)" if verdict.ok else "; ".join(verdict.violated) + ")")
            )
        _note(session, rollout, f"{label} installed: {counts}; soaking for {rollout.soak_s} s{so_far}", now)
        return False
    if verdict.waiting:
        missing = ", ".join(verdict.missing)
        _note(session, rollout, f"{label} installed: {counts}; soak done, waiting for telemetry ({missing})", now)
        return False
    if verdict.violated:
        why = "gate failed after soak: " + "; ".join(verdict.violated)
        return _pause_and_roll_back(session, rollout, now, f"{label} rolled back: {why}")
    return _advance(session, rollout, now, counts)


def _pause_and_roll_back(session: Session, rollout: Rollout, now: float, message: str) -> bool:
    ref = f"{rollout.model_name}:{rollout.model_version}"
    fix = "fix it and"
    blobs = describe(problems_of(session, rollout.model_name, rollout.model_version))
    if blobs:  # agents refused files of this version: the controller's copy may be what is bad
        fix = f"{blobs}: check the controller's copy with `slmops models verify {ref}`, restore what it lists; then"
    msg = f"{message}; {fix} `slmops rollout resume {rollout.rollout_id}` retries the wave, or abort it"
    if not cas_rollout(session, rollout, state=PAUSED, message=msg, updated_at=now):
        return False
    count = roll_back_targets(session, rollout.rollout_id, now, message, waves={rollout.current_wave})
    log.warning("rollout %s paused: %s (%d device(s) go back)", rollout.rollout_id, message, count)
    return True


def _advance(session: Session, rollout: Rollout, now: float, counts: str) -> bool:
    waves = waves_of(rollout)
    label = _wave_label(rollout)
    target_waves = {t.wave for t in targets_of(session, rollout.rollout_id) if t.state != SKIPPED}
    nxt = next_wave_with_targets(rollout.current_wave, target_waves, len(waves))
    if nxt is None:
        everyone = [t for t in targets_of(session, rollout.rollout_id)]
        total = ", ".join(f"{sum(1 for t in everyone if t.state == s)} {s}" for s in (HEALTHY, FAILED, SKIPPED))
        if not cas_rollout(session, rollout, state=SUCCEEDED, message=f"all waves done: {total}", updated_at=now):
            return False
        log.info("rollout %s succeeded: %s", rollout.rollout_id, total)
        return True
    if rollout.approve == "manual":
        msg = (
            f"{label} done ({counts}), gates held for {rollout.soak_s} s; approve wave {nxt + 1} "
            f"with `slmops rollout resume {rollout.rollout_id}`"
        )
        return cas_rollout(session, rollout, state=WAITING_APPROVAL, message=msg, updated_at=now)
    msg = f"wave {nxt + 1} of {len(waves)} started (wave {rollout.current_wave + 1}: {counts})"
    if not cas_rollout(
        session, rollout, current_wave=nxt, wave_started_at=now, wave_installed_at=0.0, message=msg, updated_at=now
    ):
        return False
    start_wave(session, rollout, nxt, now)
    return True
