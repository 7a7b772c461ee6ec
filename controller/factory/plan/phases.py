"""The factory pipeline as data: an ordered list of phases, each reading its part of the recipe and requesting
steps from the planner by artifact name (never by step id). ``*``: once per profile.

    phase                 steps (when)                                        provides
    data                  task-data (data.task), merge-data (data.extra_train)  train validation test prompts
    teacher               task-data@V merge-data@teacher (teacher_variants),  teacher
                          train-teacher (teacher.train)
    distill               distill-data (a teacher)                            student-data
    search                search (search:)                                    search-config
    student               train-student (unless student.train: false)         model
    finetune              finetune (finetune)                                 model (adapter base)
    reference             convert, convert@teacher (evaluation.teacher)       reference teacher-reference
    holdout               label-holdout (evaluation.holdout and a teacher)    holdout
    variant*              quantize@P, or export-adapter@P (merge: false)      variant
    drift-reference*      signal-reference@P (evaluation.drift_reference)     variant (with its drift reference)
    evaluate*             evaluate@P                                          evaluation golden
    holdout-evaluate*     evaluate-holdout@P (a hold-out set)                 holdout-evaluation
    parent*               parent@P, evaluate-parent@P (and a parent version)  parent parent-evaluation
    evaluate-references   evaluate@student-fp32, evaluate@teacher
    publish               publish

Phases register with :func:`phase` (``plan/model.py``, ``plan/variants.py``). The recipe's ``stages:`` entries
(any registered stage) are planned right after the phase they name in ``after``; their input ports read the
artifacts named like the ports (or as ``inputs`` says), their outputs provide artifacts of the same names (or
as ``outputs`` says), so a stage that reads and provides ``model`` after ``finetune`` is what later phases
convert and quantize.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from controller.factory.plan.planner import Binding, Planner
from controller.factory.recipe import ProfileEntry, Recipe, StageEntry
from controller.factory.stage import stage_spec
from shared.errors import NotFound, RecipeError, UnknownProfile
from shared.profiles import DeviceProfile


@dataclass
class PlanContext:
    """What a phase reads: the recipe, the profiles, the planner; per-profile phases also the profile."""

    recipe: Recipe
    profiles: dict[str, DeviceProfile]
    planner: Planner
    source: str = "<recipe>"
    job_id: str = ""
    drift_event_id: str = ""
    entry: ProfileEntry | None = None
    index: int = 0
    planned_profiles: list[str] = field(default_factory=list)
    # per planned profile: what publish records for its variant (profile, precision, provider, runtime)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def profile(self) -> DeviceProfile:
        assert self.entry is not None, "only per-profile phases have a profile"
        return self.profiles[self.entry.name]

    def error(self, where: str, reason: str) -> RecipeError:
        return RecipeError(self.source, where, reason)


@dataclass(frozen=True)
class Phase:
    name: str
    order: int
    plan: Callable[[PlanContext], None]
    per_profile: bool = False


PHASES: dict[str, Phase] = {}


def phase(name: str, order: int, per_profile: bool = False) -> Callable[[Callable[[PlanContext], None]], Callable]:
    """Register a phase function; ``order`` places it in the pipeline (see the table above)."""

    def register(fn: Callable[[PlanContext], None]) -> Callable[[PlanContext], None]:
        if name in PHASES and PHASES[name].plan is not fn:
            raise ValueError(f"phase '{name}' registered twice")
        PHASES[name] = Phase(name, order, fn, per_profile)
        return fn

    return register


def ordered_phases() -> list[Phase]:
    return sorted(PHASES.values(), key=lambda p: p.order)


def run_phases(ctx: PlanContext) -> None:
    """Every phase in order (consecutive per-profile phases run profile by profile), each followed by the
    recipe's extra stages placed after it."""
    _check_extra_stages(ctx)
    for per_profile, group in itertools.groupby(ordered_phases(), key=lambda p: p.per_profile):
        phases = list(group)
        if not per_profile:
            for ph in phases:
                _run(ph, ctx)
            continue
        for index, entry in enumerate(ctx.recipe.profile_entries()):
            with _profile_scope(ctx, index, entry):
                for ph in phases:
                    _run(ph, ctx)


def _run(ph: Phase, ctx: PlanContext) -> None:
    ph.plan(ctx)
    for i, entry in enumerate(ctx.recipe.stages):
        if entry.after == ph.name:
            _plan_extra(ctx, i, entry)


@contextmanager
def _profile_scope(ctx: PlanContext, index: int, entry: ProfileEntry) -> Iterator[None]:
    where = f"profiles[{index}]"
    if entry.name in ctx.planned_profiles:
        raise ctx.error(where, f"profile '{entry.name}' is listed twice")
    if entry.name not in ctx.profiles:
        raise ctx.error(where, UnknownProfile(entry.name, list(ctx.profiles)).message)
    ctx.planned_profiles.append(entry.name)
    ctx.entry, ctx.index, ctx.planner.profile = entry, index, entry.name
    try:
        yield
    finally:
        ctx.entry, ctx.index, ctx.planner.profile = None, 0, ""


# --- the recipe's extra stages ---------------------------------------------------------------------------
def _check_extra_stages(ctx: PlanContext) -> None:
    for i, entry in enumerate(ctx.recipe.stages):
        if entry.after not in PHASES:
            known = ", ".join(p.name for p in ordered_phases() if p.name != "publish")
            raise ctx.error(f"stages[{i}].after", f"unknown phase '{entry.after}' (phases: {known})")
        if entry.after == "publish":
            raise ctx.error(f"stages[{i}].after", "nothing is planned after 'publish'")
        try:
            stage_spec(entry.stage)
        except NotFound as exc:
            raise ctx.error(f"stages[{i}].stage", exc.message) from exc


def _plan_extra(ctx: PlanContext, index: int, entry: StageEntry) -> None:
    planner = ctx.planner
    spec = stage_spec(entry.stage)
    sid = entry.id or entry.stage
    if planner.profile:
        sid = f"{sid}@{planner.profile}"
    inputs: dict[str, Binding] = {}
    for port in spec.inputs:
        name = entry.inputs.get(port.name, port.name.removesuffix("[]"))
        if port.name in entry.inputs or not port.optional or planner.has(str(name)):
            inputs[port.name] = name
    unknown = sorted(set(entry.inputs) - {p.name for p in spec.inputs})
    if unknown:
        raise ctx.error(f"stages[{index}].inputs", f"stage '{entry.stage}' has no input {unknown[0]!r}")
    provides = dict(entry.outputs) or {p.name: p.name for p in spec.outputs if not p.optional}
    planner.add(sid, entry.stage, entry.config, inputs, provides)
