"""Phases from the trained model to the registry: one variant per profile, its evaluations, the reference
evaluations and ``publish``.

Changing one profile changes only that profile's variant/evaluate configs, so only they rerun.
"""

from __future__ import annotations

from typing import Any

from controller.factory.plan.model import evaluate_teacher
from controller.factory.plan.phases import PlanContext, phase
from controller.factory.plan.planner import Binding
from controller.factory.plan.search import ARTIFACT as SEARCH_CONFIG
from controller.factory.plan.search import search_binding

VARIANT_FACTS = ("profile", "precision", "execution_provider", "runtime")
# publish's per-variant hold-out inputs -> the per-profile artifacts that feed them (when planned)
HOLDOUT_RESULTS = {"holdout_evaluation": "holdout-evaluation", "parent_holdout_evaluation": "parent-evaluation"}


def _common(ctx: PlanContext) -> dict[str, Any]:
    """Evaluation settings every evaluate step shares (its ``data`` is bound by the planner)."""
    ev = ctx.recipe.evaluation
    return {
        "task": ctx.recipe.data.task,
        "limit": ev.limit,
        "max_new_tokens": ev.max_new_tokens,
        "threads": ev.threads,
        "golden": ev.golden,
        "warmup": ev.warmup,
    }


def _on_holdout(ctx: PlanContext) -> dict[str, Any]:
    return {**_common(ctx), "limit": 0, "golden": 0, "role": "holdout"}


def _precision(ctx: PlanContext) -> str:
    assert ctx.entry is not None
    return ctx.entry.precision or ctx.profile.precision


def _runtime_adapter(ctx: PlanContext) -> bool:
    """finetune with ``merge: false`` keeps a runtime-switchable LoRA adapter in every variant."""
    finetune = ctx.recipe.finetune
    return finetune is not None and finetune.get("merge", True) is False


@phase("variant", order=80, per_profile=True)
def plan_variant(ctx: PlanContext) -> None:
    """The profile's deployable build: ``quantize`` (the model builder or the profile's Olive workflow), or
    ``export-adapter`` (base model + ``.onnx_adapter``) when fine-tuning keeps its adapter."""
    entry, prof, planner = ctx.entry, ctx.profile, ctx.planner
    assert entry is not None
    build: dict[str, Any] = {
        "profile": prof.name,
        "precision": _precision(ctx),
        "execution_provider": prof.execution_provider,
        "runtime": prof.runtime,
        "int4_block_size": entry.int4_block_size or prof.int4_block_size,
        "int4_accuracy_level": (
            entry.int4_accuracy_level if entry.int4_accuracy_level is not None else prof.int4_accuracy_level
        ),
        "extra_options": entry.builder_options,
    }
    workflow = entry.olive_workflow if entry.olive_workflow is not None else prof.olive_workflow
    if _runtime_adapter(ctx):
        if workflow is not None:
            raise ctx.error(
                f"profiles[{ctx.index}]",
                "a runtime LoRA adapter (finetune.merge: false) is built by the model builder; this profile's "
                "olive_workflow cannot be used",
            )
        cfg = {**build, "adapter_name": ctx.recipe.name}
        sid = planner.add(
            f"export-adapter@{prof.name}",
            "export-adapter",
            cfg,
            {"base": "base", "adapter": "adapter"},
            {"model": "variant"},
        )
    else:
        cfg = {**build, "olive_workflow": workflow}
        inputs: dict[str, Binding] = {"model": "model", "reference": "reference", **search_binding(ctx, "quantize")}
        sid = planner.add(f"quantize@{prof.name}", "quantize", cfg, inputs, {"model": "variant"})
    # what publish records for the variant: read from the step that builds it (its runtime included)
    built = planner.step(sid).config
    ctx.variants[prof.name] = {k: built[k] for k in VARIANT_FACTS}


@phase("drift-reference", order=85, per_profile=True)
def plan_drift_reference(ctx: PlanContext) -> None:
    """The variant's drift reference (``signal-reference``): its signals on the validation split and a sketch of
    the training prompts' words, added to the variant folder so the signed manifest covers them. Skipped when the
    recipe turns it off or places the stage itself, for runtime adapters (the base model alone is not what
    devices serve), and without a validation split."""
    recipe, planner = ctx.recipe, ctx.planner
    placed = any(st.stage == "signal-reference" for st in recipe.stages)
    if not recipe.evaluation.drift_reference or placed or _runtime_adapter(ctx) or not planner.has("validation"):
        return
    cfg = {
        "task": recipe.data.task,
        "max_new_tokens": recipe.evaluation.max_new_tokens,
        "execution_provider": ctx.profile.execution_provider,
    }
    planner.add(
        f"signal-reference@{ctx.profile.name}",
        "signal-reference",
        cfg,
        {"variant": "variant", "validation": "validation", "prompts": "prompts"},
        {"variant": "variant"},
    )


@phase("evaluate", order=90, per_profile=True)
def plan_evaluate(ctx: PlanContext) -> None:
    """The variant on the test split."""
    prof = ctx.profile
    cfg = {
        **_common(ctx),
        "role": "variant",
        "profile": prof.name,
        "label": prof.name,
        "precision": _precision(ctx),
        "execution_provider": prof.execution_provider,
    }
    ctx.planner.add(
        f"evaluate@{prof.name}",
        "evaluate",
        cfg,
        {"model": "variant", "data": "test"},
        {"metrics": "evaluation", "golden": "golden"},
    )


@phase("holdout-evaluate", order=100, per_profile=True)
def plan_holdout_evaluate(ctx: PlanContext) -> None:
    """The variant on the hold-out set, when there is one."""
    if not ctx.planner.has("holdout"):
        return
    name = ctx.profile.name
    cfg = {**_on_holdout(ctx), "profile": name, "precision": _precision(ctx), "label": f"{name} on the hold-out"}
    ctx.planner.add(
        f"evaluate-holdout@{name}",
        "evaluate",
        cfg,
        {"model": "variant", "data": "holdout"},
        {"metrics": "holdout-evaluation"},
    )


@phase("parent", order=110, per_profile=True)
def plan_parent(ctx: PlanContext) -> None:
    """The parent version's variant (``lineage.parent_version``) on the same hold-out set."""
    planner, recipe = ctx.planner, ctx.recipe
    parent = str(recipe.lineage.get("parent_version", "")) if planner.has("holdout") else ""
    if not parent:
        return
    name = ctx.profile.name
    planner.add(
        f"parent@{name}",
        "registry-variant",
        {"name": recipe.name, "version": parent, "profile": name},
        provides={"model": "parent"},
    )
    cfg = {**_on_holdout(ctx), "profile": name, "label": f"{name} {recipe.name}:{parent} on the hold-out"}
    planner.add(
        f"evaluate-parent@{name}",
        "evaluate",
        cfg,
        {"model": "parent", "data": "holdout"},
        {"metrics": "parent-evaluation"},
    )


@phase("evaluate-references", order=120)
def plan_reference_evaluations(ctx: PlanContext) -> None:
    """The references of the seed table: the fp32 student and the teacher."""
    planner, ev = ctx.planner, ctx.recipe.evaluation
    if ev.reference:
        cfg = {**_common(ctx), "role": "reference", "label": "student-fp32", "precision": "fp32"}
        planner.add("evaluate@student-fp32", "evaluate", cfg, {"model": "reference", "data": "test"})
    if evaluate_teacher(ctx):
        cfg = {
            **_common(ctx),
            "role": "teacher",
            "label": f"teacher-{ev.teacher_precision}",
            "precision": ev.teacher_precision,
            "execution_provider": ev.teacher_execution_provider,
        }
        planner.add("evaluate@teacher", "evaluate", cfg, {"model": "teacher-reference", "data": "test"})


@phase("publish", order=130)
def plan_publish(ctx: PlanContext) -> None:
    """Every variant as one signed registry version, with its lineage."""
    recipe, planner = ctx.recipe, ctx.planner
    lineage: dict[str, Any] = {
        "teacher": _teacher_lineage(ctx),
        "student": {k: v for k, v in recipe.student.items() if k in ("init", "model", "method")},
        "finetune": (recipe.finetune or {}).get("method", ""),
        "recipe_name": recipe.name,
        "recipe_hash": recipe.recipe_hash(),
        "parent_version": "",
        "drift_event_id": ctx.drift_event_id,
        "job_id": ctx.job_id,
        **recipe.lineage,
    }
    variants = [dict(facts) for facts in ctx.variants.values()]
    inputs: dict[str, Binding] = {}
    for i, name in enumerate(ctx.variants):
        inputs[f"variants[{i}].model"] = f"variant@{name}"
        inputs[f"variants[{i}].evaluation"] = f"evaluation@{name}"
        inputs[f"variants[{i}].golden"] = f"golden@{name}"
        for port, artifact in HOLDOUT_RESULTS.items():
            if planner.has(f"{artifact}@{name}"):
                inputs[f"variants[{i}].{port}"] = f"{artifact}@{name}"
    inputs["lineage_hashes.data_hash"] = "student-data"  # the student's training data, hashed at publish time
    inputs["schema_data"] = "student-data"  # without a task schema, the version's is derived from its answers
    if planner.has(SEARCH_CONFIG):
        inputs["search"] = SEARCH_CONFIG  # the best configuration and the trial summary go in the lineage
    config = {"name": recipe.name, "variants": variants, "lineage": lineage, "task": recipe.data.task}
    planner.add("publish", "publish", config, inputs)


def _teacher_lineage(ctx: PlanContext) -> dict[str, Any]:
    t = ctx.recipe.teacher
    if t is None:
        return {"kind": "none"}
    if t.kind == "train":
        assert t.train is not None
        return {"kind": "trained", "spec": t.train.get("spec", {})}
    if t.kind == "folder":
        return {"kind": "folder", "folder": t.folder}
    assert t.endpoint is not None
    return {"kind": "endpoint", "base_url": t.endpoint.get("base_url", ""), "model": t.endpoint.get("model", "")}
