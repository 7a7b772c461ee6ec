"""The closed loop's second half: when a drift-triggered job has published a version that beats the one in
production on the shifted data, it is rolled out as a canary through the normal rollout path (waves, gates,
rollback). ``promote_finished_jobs`` runs on the scheduler (``controller.scheduler.jobs``); the first half, drift
event -> job, is :mod:`controller.loop.retrain`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from controller.rollout import engine as rollouts
from controller.rollout.spec import RolloutConflict, RolloutSpec
from controller.store.kv import get_value
from controller.store.tables import DriftEventRow, Job, KeyValue
from shared.errors import NotFound

if TYPE_CHECKING:
    from controller.core.app import ControllerApp

log = logging.getLogger(__name__)
# Accuracy a retrained version may lose on the (unshifted) test split and still be rolled out: at least this,
# or, when the split is small, one standard error of the difference between the two measured accuracies
# (both are estimates from the same n examples, so both carry sampling noise).
REGRESSION_TOLERANCE = 0.02
PROMOTED = "loop:promoted:"  # KeyValue key prefix: job id -> what promote_finished_jobs decided


def recorded_promotions(session: Session) -> dict[str, str]:
    """Every decision :func:`promote_finished_jobs` recorded, by job id."""
    rows = session.exec(select(KeyValue).where(col(KeyValue.key).startswith(PROMOTED))).all()
    return {row.key.removeprefix(PROMOTED): row.value for row in rows}


def regression_tolerance(theirs: float, ours: float, n: int) -> float:
    """How much test-split accuracy may drop from ``theirs`` (the parent) to ``ours``, both measured on ``n``
    examples: REGRESSION_TOLERANCE, or one standard error of the difference of the two accuracies."""
    if n <= 0:
        return REGRESSION_TOLERANCE
    variance = (theirs * (1 - theirs) + ours * (1 - ours)) / n
    return max(REGRESSION_TOLERANCE, math.sqrt(variance))


def variant_verdict(m: dict[str, float], old: dict[str, float] | None, profile: str) -> tuple[bool, str]:
    """Better than the parent on the held-out production prompts, and no worse than it (beyond the tolerance)
    on the recipe's test split, which the fleet's unshifted traffic still looks like."""
    checks = []
    if "holdout_accuracy" in m and "parent_holdout_accuracy" in m:
        ours, theirs = m["holdout_accuracy"], m["parent_holdout_accuracy"]
        checks.append((ours > theirs, f"held-out prompts {ours:.3f} vs {theirs:.3f}"))
    if old is not None and "accuracy" in m and "accuracy" in old:
        ours, theirs = m["accuracy"], old["accuracy"]
        n = min(int(old.get("n", 0)), int(m.get("n", old.get("n", 0))))  # the smaller sample, when they differ
        tolerance = regression_tolerance(theirs, ours, n)
        ok = ours + tolerance >= theirs
        checks.append((ok, f"test split {ours:.3f} vs {theirs:.3f} (tolerance {tolerance:.3f})"))
    return all(ok for ok, _ in checks), f"{profile}: " + ", ".join(text for _, text in checks)


def _beats_parent(app: ControllerApp, name: str, new: str, parent: str) -> tuple[bool, str]:
    """Compare the new version with the one it replaces, variant by variant."""
    verdicts = []
    for variant in app.registry.get_model(name, new).variants:
        try:
            old = json.loads(app.registry.variant(name, parent, variant.profile).metrics_json or "{}")
        except NotFound:
            old = None
        metrics = json.loads(variant.metrics_json or "{}")
        if old is None and "parent_holdout_accuracy" not in metrics:
            continue
        verdicts.append(variant_verdict(metrics, old, variant.profile))
    if not verdicts:
        return True, "no comparable variant in the parent version"
    return all(ok for ok, _ in verdicts), "; ".join(text for _, text in verdicts)


def promotion_of(app: ControllerApp, job_id: str) -> str:
    """What :func:`promote_finished_jobs` decided for a job's result ("" until it has)."""
    with app.store.session() as s:
        return get_value(s, PROMOTED + job_id)


def promote_finished_jobs(app: ControllerApp) -> list[str]:
    """Roll out, as a canary, each version a drift-triggered job published; returns rollout ids created."""
    created = []
    with app.store.session() as s:
        jobs = s.exec(
            select(Job).where(Job.state == "SUCCEEDED", Job.drift_event_id != "", Job.result_version != "")
        ).all()
        done = recorded_promotions(s)
    for job in jobs:
        if job.job_id in done:
            continue
        with app.store.session() as s:
            event = s.get(DriftEventRow, job.drift_event_id)
        parent = event.model_version if event else ""
        ok, why = _beats_parent(app, job.result_name, job.result_version, parent)
        outcome = f"not rolled out: does not beat {parent} ({why})"
        if ok:
            spec = RolloutSpec(
                job.result_name,
                job.result_version,
                waves=list(app.settings.loop_waves),
                gate=app.settings.loop_gate,
                soak_s=app.settings.loop_soak_s,
                reason=f"drift {job.drift_event_id}: {why}",
                drift_event_id=job.drift_event_id,
            )
            try:
                rollout_id = rollouts.create_rollout(app.store, spec)
            except RolloutConflict as exc:
                log.info("canary of %s:%s waits: %s", job.result_name, job.result_version, exc.message)
                continue
            created.append(rollout_id)
            outcome = f"canary rollout {rollout_id} ({why})"
        log.info("job %s -> %s:%s: %s", job.job_id, job.result_name, job.result_version, outcome)
        with app.store.session() as s:
            s.add(KeyValue(key=PROMOTED + job.job_id, value=outcome))
    return created
