"""Recipe -> plan: the pipeline's steps, planned from what each stage declares.

    stages (``stages/*.py``)   each declares typed input ports, output ports and resources (``spec.py``)
    phases (``phases.py``)     the pipeline as an ordered list of phases; each reads its part of the recipe
                               and requests steps by artifact name (``model.py``, ``variants.py``)
    planner (``planner.py``)   matches each request's inputs to earlier outputs (or recipe-given paths) by
                               name and kind, writes the references into configs, derives the needs
    describe (``describe.py``) the plan as data: inputs, outputs, resources and cache key of every step

:func:`expand_recipe` returns the steps the runner executes; :func:`plan_recipe` the printable plan
(``slmops build RECIPE --plan``).

Adding a stage: one file under ``stages/`` (a :class:`~controller.factory.stage.Stage` subclass with its config
class, ``inputs``/``outputs`` ports, ``resources`` and ``run``) registered with ``@register_stage``. A recipe
plans it with ``stages: [{stage: NAME, after: PHASE}]``; to make it part of every build, register a phase
(``@phase(name, order)``) that requests it. Neither touches the planner.
"""

from __future__ import annotations

from pathlib import Path

from controller.factory.cache import Fingerprints
from controller.factory.pipeline import PipelineStep
from controller.factory.plan import model as _model  # noqa: F401  (registers its phases)
from controller.factory.plan import search as _search  # noqa: F401  (registers its phase)
from controller.factory.plan import variants as _variants  # noqa: F401  (registers its phases)
from controller.factory.plan.describe import ROW_HEADERS, Plan, PlannedStep, describe, plan_hash
from controller.factory.plan.phases import PlanContext, run_phases
from controller.factory.plan.planner import Planner
from controller.factory.recipe import Recipe, load_recipe_file
from shared.profiles import DeviceProfile, bundled_profiles_dir, load_profiles

__all__ = [
    "ROW_HEADERS",
    "Plan",
    "PlannedStep",
    "Planner",
    "describe",
    "expand_recipe",
    "plan_file",
    "plan_hash",
    "plan_recipe",
]


def expand_recipe(
    recipe: Recipe,
    profiles: dict[str, DeviceProfile],
    job_id: str = "",
    drift_event_id: str = "",
    source: str = "<recipe>",
) -> list[PipelineStep]:
    """The pipeline (ordered steps, each reading only from earlier ones) that builds ``recipe``."""
    ctx = PlanContext(recipe, profiles, Planner(source), source, job_id, drift_event_id)
    run_phases(ctx)
    return ctx.planner.steps


def plan_recipe(
    recipe: Recipe,
    profiles: dict[str, DeviceProfile],
    *,
    job_id: str = "",
    drift_event_id: str = "",
    source: str = "<recipe>",
    fingerprints: Fingerprints | None = None,
) -> Plan:
    """The printable plan: every step's inputs, outputs, resources and cache key (configs are parsed)."""
    steps = expand_recipe(recipe, profiles, job_id, drift_event_id, source)
    return describe(steps, recipe.name, source, fingerprints)


def plan_file(path: Path, profiles_dir: Path | None = None) -> Plan:
    """The plan for a recipe file, for the profiles in ``profiles_dir`` (default: the bundled ones), without a
    controller (``slmops build RECIPE --plan``)."""
    path = Path(path).resolve()
    profiles = load_profiles(Path(profiles_dir) if profiles_dir else bundled_profiles_dir())
    return plan_recipe(load_recipe_file(path), profiles, source=str(path))
