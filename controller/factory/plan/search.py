"""The ``search`` phase: a hyperparameter search before the student is trained, when the recipe has ``search:``.

It reads the distilled training data and the validation split, and provides ``search-config`` (the best
trial's ``best_config.json``). The training phases bind it to the ``search`` input of the steps whose values
the space changes (:func:`search_binding`): train-student (learning rate, steps, batch size, width, depth),
finetune (LoRA rank/alpha/targets; the training dimensions when the student is not trained) and the target
profile's quantize (int4 block size). The search's constraints are the target profile's budgets.
"""

from __future__ import annotations

from typing import Any

from controller.factory.plan.phases import PlanContext, phase
from controller.factory.plan.planner import Binding
from controller.factory.recipe import ProfileEntry
from controller.factory.search.space import ARCH_DIMS, BUILD_DIMS, LORA_DIMS, TRAINING_DIMS, SearchSection
from controller.factory.stages.search import REF_KEYS
from controller.factory.training.refs import looks_like_path

ARTIFACT = "search-config"


def _target(ctx: PlanContext, section: SearchSection) -> ProfileEntry:
    """The profile the search builds for: ``search.profile`` (a known profile; a re-optimize job may plan
    only other profiles) or the recipe's first."""
    entries = {e.name: e for e in ctx.recipe.profile_entries()}
    name = section.profile or next(iter(entries))
    if name not in ctx.profiles:
        raise ctx.error("search.profile", f"unknown profile '{name}' (known: {', '.join(sorted(ctx.profiles))})")
    return entries.get(name) or ProfileEntry(name=name)


def train_section(ctx: PlanContext) -> str:
    return "student" if ctx.recipe.student.get("train", True) else "finetune"


def _check_dims(ctx: PlanContext, section: SearchSection, precision: str) -> None:
    dims, recipe = section.space.dimensions(), ctx.recipe
    finetune = recipe.finetune
    if train_section(ctx) == "finetune" and finetune is None:
        raise ctx.error("search", "the student is not trained (student.train: false) and there is no finetune")
    if any(d in ARCH_DIMS for d in dims):
        init = recipe.student.get("init")
        if not isinstance(init, dict) or train_section(ctx) != "student":
            raise ctx.error("search.space", "hidden_size / num_layers change student.init: the recipe must give it")
        heads = int(init.get("num_heads", 4))
        for width in section.space.hidden_size if isinstance(section.space.hidden_size, list) else []:
            if width % heads:
                raise ctx.error("search.space.hidden_size", f"{width} is not divisible by num_heads {heads}")
    if any(d in LORA_DIMS for d in dims) and (finetune is None or finetune.get("method", "lora") == "full"):
        raise ctx.error("search.space", "lora_r / lora_alpha / lora_targets need a finetune section with LoRA")
    if any(d in BUILD_DIMS for d in dims) and precision != "int4" and section.reuse_params is None:
        raise ctx.error("search.space.int4_block_size", f"the target profile builds {precision}, not int4")


def _budgets(section: SearchSection, profile: Any) -> dict[str, float]:
    c = section.constraints
    out = {
        "max_latency_ms": c.max_latency_ms or (profile.max_latency_ms if c.from_profile else 0),
        "max_memory_mb": c.max_memory_mb or (profile.max_memory_mb if c.from_profile else 0),
        "max_size_mb": c.max_size_mb,
        "max_parameters": c.max_parameters,
    }
    return {k: float(v) for k, v in out.items() if v}


def _without_refs(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    keep = {"tokenizer"}  # a tokenizer folder given as a path is read as it is
    return {k: v for k, v in cfg.items() if k not in REF_KEYS or (k in keep and looks_like_path(str(v)))}


@phase("search", order=35)
def plan_search(ctx: PlanContext) -> None:
    """The search step (after distillation, before the student)."""
    recipe, planner = ctx.recipe, ctx.planner
    section = recipe.search
    if section is None:
        return
    entry = _target(ctx, section)
    prof = ctx.profiles[entry.name]
    precision = entry.precision or prof.precision
    _check_dims(ctx, section, precision)
    if not planner.has("validation"):
        raise ctx.error("search", "a search scores trials on the validation split: give data.validation")
    build = {
        "profile": prof.name,
        "precision": precision,
        "execution_provider": prof.execution_provider,
        "int4_block_size": entry.int4_block_size or prof.int4_block_size,
        "int4_accuracy_level": (
            entry.int4_accuracy_level if entry.int4_accuracy_level is not None else prof.int4_accuracy_level
        ),
        "extra_options": entry.builder_options,
    }
    ev = recipe.evaluation
    cfg: dict[str, Any] = {
        "search": section.model_dump(mode="json", exclude_none=True),
        "student": _without_refs(recipe.student) if train_section(ctx) == "student" else None,
        "finetune": _without_refs(recipe.finetune),
        "train_section": train_section(ctx),
        "build": build,
        "budgets": _budgets(section, prof),
        "task": recipe.data.task,
        "max_new_tokens": ev.max_new_tokens,
        "threads": ev.threads or 1,
    }
    inputs: dict[str, Binding] = {"data": "student-data", "validation": "validation"}
    if planner.has("teacher"):
        inputs["teacher"] = "teacher"
    if train_section(ctx) == "finetune":
        planner.give("search-base", str(recipe.student["model"]), "hf-model")
        inputs.update(model="search-base", data="train")
    elif recipe.finetune is not None:
        inputs["finetune_data"] = "train"
    planner.add("search", "search", cfg, inputs, {"best_config": ARTIFACT})


def search_binding(ctx: PlanContext, stage: str) -> dict[str, Binding]:
    """``{"search": "search-config"}`` when the search changes what ``stage`` (student | finetune | quantize of
    the target profile) is configured with; ``{}`` otherwise."""
    section = ctx.recipe.search
    if section is None or not ctx.planner.has(ARTIFACT):
        return {}
    dims = set(section.space.dimensions())
    wanted = {
        "student": (set(TRAINING_DIMS) | set(ARCH_DIMS)) if train_section(ctx) == "student" else set(ARCH_DIMS),
        "finetune": set(LORA_DIMS) | (set(TRAINING_DIMS) if train_section(ctx) == "finetune" else set()),
        "quantize": set(BUILD_DIMS),
    }[stage]
    if stage == "quantize" and _target(ctx, section).name != ctx.profile.name:
        return {}
    return {"search": ARTIFACT} if dims & wanted else {}
