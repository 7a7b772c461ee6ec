"""The closed loop's first half: a drift event starts a retrain or re-optimize job through the model factory.

``LoopActions`` is the drift policy's ``DriftActions`` (``controller.drift.policy``); ``trigger_retrain`` is
``slmops retrain``. What happens to the job's result is :mod:`controller.loop.promotion`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from sqlmodel import select

from controller.loop.promotion import recorded_promotions
from controller.store.tables import DriftEventRow, Job, SampledPrompt
from shared.errors import FailedPrecondition, NotFound

if TYPE_CHECKING:
    from controller.core.app import ControllerApp

log = logging.getLogger(__name__)
PRECISION_LADDER = ["fp32", "fp16", "int8", "int4"]
HOLDOUT_SHARE = 0.2
ACTIVE_JOB_STATES = ("QUEUED", "RUNNING")


def _source_job(app: ControllerApp, name: str, version: str) -> Job:
    """The build job that produced ``name:version`` (its effective recipe is what a retrain reruns)."""
    model = app.registry.get_model(name, version)
    job = app.jobs.get(model.job_id) if model.job_id else None
    if job is None or not job.recipe_yaml:
        raise FailedPrecondition(f"{name}:{version} was not built by a recipe on this controller: nothing to rerun")
    return job


def _answering_job(app: ControllerApp, name: str, version: str) -> Job | None:
    """A job already answering drift on ``name:version``: a retrain or re-optimize of the model still running,
    or a finished retrain from this very version whose result is (or is about to be) rolled out."""
    states = (*ACTIVE_JOB_STATES, "SUCCEEDED")
    with app.store.session() as s:
        jobs = s.exec(select(Job).where(Job.state.in_(states), Job.kind != "build")).all()  # type: ignore[attr-defined]
        outcomes = recorded_promotions(s)
    for job in sorted(jobs, key=lambda j: j.state not in ACTIVE_JOB_STATES):
        recipe = yaml.safe_load(job.recipe_yaml) or {}
        if recipe.get("name") != name:
            continue
        if job.state in ACTIVE_JOB_STATES:
            return job
        parent = str((recipe.get("lineage") or {}).get("parent_version", ""))
        outcome = outcomes.get(job.job_id)
        if job.kind == "retrain" and parent == version and (outcome is None or outcome.startswith("canary")):
            return job
    return None


def export_sampled_prompts(app: ControllerApp, name: str, out_dir: Path) -> tuple[Path, Path, int]:
    """Unused sampled prompts of model ``name`` split into train / holdout JSONL files (by prompt hash)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with app.store.session() as s:
        rows = s.exec(
            select(SampledPrompt).where(SampledPrompt.model_name == name, SampledPrompt.used_by_job == "")
        ).all()
    prompts = sorted({r.prompt for r in rows if r.prompt.strip()})
    train, holdout = out_dir / "sampled_prompts.jsonl", out_dir / "holdout_prompts.jsonl"
    with open(train, "w") as ft, open(holdout, "w") as fh:
        for prompt in prompts:
            bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            (fh if bucket < HOLDOUT_SHARE else ft).write(json.dumps({"prompt": prompt}) + "\n")
    return train, holdout, len(prompts)


def _mark_prompts_used(app: ControllerApp, name: str, job_id: str) -> None:
    with app.store.session() as s:
        for row in s.exec(
            select(SampledPrompt).where(SampledPrompt.model_name == name, SampledPrompt.used_by_job == "")
        ):
            row.used_by_job = job_id
            s.add(row)


def search_overrides(app: ControllerApp, recipe_yaml: str, name: str, version: str) -> dict[str, object]:
    """A retrain of a recipe with ``search:``: with ``on_retrain: reuse`` (the default) the parent version's best
    configuration (recorded in its lineage by publish) is reused and no trials run; with ``search`` (or when the
    parent has no recorded search) the new job searches again, in a study of its own."""
    search = (yaml.safe_load(recipe_yaml) or {}).get("search")
    if not isinstance(search, dict) or search.get("on_retrain", "reuse") != "reuse":
        return {}
    return reuse_overrides(app.registry.get_model(name, version).lineage, f"{name}:{version}")


def reuse_overrides(lineage: dict[str, Any], parent: str) -> dict[str, object]:
    """``{"search": {"reuse_params": ..., "reuse_from": parent}}`` from a parent's lineage ({} without a search)."""
    best = (lineage.get("search") or {}).get("best_params")
    if not isinstance(best, dict):
        log.info("%s has no recorded search result: the retrain searches again", parent)
        return {}
    return {"search": {"reuse_params": best, "reuse_from": parent}}


def _search_target(recipe_yaml: str) -> str:
    """The profile a recipe's search targets ("" without a search); a re-optimize of another profile leaves the
    search step as it was, so it comes from the stage cache."""
    recipe = yaml.safe_load(recipe_yaml) or {}
    search = recipe.get("search")
    if not isinstance(search, dict):
        return ""
    first = (recipe.get("profiles") or [""])[0]
    return str(search.get("profile") or (first.get("name", "") if isinstance(first, dict) else first))


class LoopActions:
    """What the drift policy may do: start jobs through the factory (``controller.drift.policy.DriftActions``)."""

    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    def retrain(self, event: DriftEventRow) -> str:
        """Distill again with the prompts devices sampled, evaluated on a held-out share of them."""
        app, name, version = self.app, event.model_name, event.model_version
        answering = _answering_job(app, name, version)
        if answering is not None:
            log.info("drift %s: %s:%s is already being retrained (job %s, %s)", event.event_id, name, version,
                     answering.job_id, answering.state)  # fmt: skip
            return answering.job_id
        source = _source_job(app, name, version)
        work = app.settings.data_dir / "loop" / event.event_id
        train, holdout, count = export_sampled_prompts(app, name, work)
        if count == 0:
            raise FailedPrecondition(
                f"no sampled prompts for {name}: enable `sample_prompts: true` on profile '{event.profile}' "
                "so devices send prompts for retraining"
            )
        overrides: dict[str, object] = {
            "extra_train_data": [str(train)],
            "parent_version": version,
            "lineage": {"drift_event_id": event.event_id, "sampled_prompts": count},
        }
        if holdout.stat().st_size:
            # the new variants and the ones they replace are scored on the same held-out production prompts
            overrides["holdout_data"] = str(holdout)
        overrides.update(search_overrides(app, source.recipe_yaml, name, version))
        job = app.jobs.submit(source.recipe_yaml, source.recipe_path, "retrain", overrides, event.event_id)
        _mark_prompts_used(app, name, job.job_id)
        log.info("drift %s (%s on %s): retrain job %s with %d sampled prompts", event.event_id, event.kind,
                 event.profile, job.job_id, count)  # fmt: skip
        return job.job_id

    def reoptimize(self, event: DriftEventRow) -> str:
        """Rebuild the drifted profile one precision step lower, from cached stages."""
        app, name, version = self.app, event.model_name, event.model_version
        source = _source_job(app, name, version)
        variant = app.registry.variant(name, version, event.profile)
        ladder = PRECISION_LADDER
        if variant.precision not in ladder or variant.precision == ladder[-1]:
            raise FailedPrecondition(f"{event.profile} already runs {variant.precision}: no lower precision to try")
        lower = ladder[ladder.index(variant.precision) + 1]
        overrides = {
            "only_profiles": [event.profile],
            "profiles": {event.profile: {"precision": lower}},
            "parent_version": version,
            "lineage": {"drift_event_id": event.event_id, "reoptimized_to": lower},
        }
        if _search_target(source.recipe_yaml) == event.profile:
            # its build changes the search's target: reuse the parent's best instead of searching at the new precision
            overrides.update(search_overrides(app, source.recipe_yaml, name, version))
        job = app.jobs.submit(source.recipe_yaml, source.recipe_path, "reoptimize", overrides, event.event_id)
        log.info(
            "drift %s: re-optimize %s for %s at %s as job %s", event.event_id, name, event.profile, lower, job.job_id
        )
        return job.job_id


def trigger_retrain(app: ControllerApp, model_name: str, profile: str, reason: str = "manual") -> Job:
    """`slmops retrain`: records a manual event (so the new version's lineage names it) and retrains."""
    current = app.registry.latest(model_name)
    if profile not in app.catalog.all():
        raise NotFound(f"unknown profile '{profile}' (see `slmops profiles list`)")
    event = DriftEventRow(
        event_id=f"drift-{uuid.uuid4().hex[:10]}",
        profile=profile,
        model_name=model_name,
        model_version=current.version,
        kind="manual",
        detector="operator",
        metric="-",
        detected_at=time.time(),
        action="retrain",
        evidence_json=json.dumps({"reason": reason}),
    )
    job_id = LoopActions(app).retrain(event)
    event.job_id = job_id
    with app.store.session() as s:
        s.add(event)
    return app.jobs.get(job_id)
