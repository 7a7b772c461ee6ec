"""Phases up to the trained model: data, teacher, distillation, student, fine-tuning, reference builds, hold-out.

Each phase requests steps by artifact name; the planner wires them (see ``planner.py``, ``phases.py``).
"""

from __future__ import annotations

from typing import Any

from controller.factory.plan.phases import PlanContext, phase
from controller.factory.plan.planner import Binding, Given
from controller.factory.plan.search import search_binding
from controller.factory.recipe import Recipe, TeacherSection

DATA_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


def task_data_config(recipe: Recipe, variant: str) -> dict[str, Any]:
    data = recipe.data
    return {
        "task": data.task,
        "variant": variant,
        "train_size": data.train_size,
        "validation_size": data.validation_size,
        "test_size": data.test_size,
        "seed": data.seed,
    }


def validation_input(ctx: PlanContext) -> dict[str, Binding]:
    """Bind ``validation`` when the recipe has a validation split."""
    return {"validation": "validation"} if ctx.planner.has("validation") else {}


def evaluate_teacher(ctx: PlanContext) -> bool:
    """Whether the teacher is built and measured (default: when the recipe trains it)."""
    ev, teacher = ctx.recipe.evaluation, ctx.recipe.teacher
    return ev.teacher if ev.teacher is not None else (teacher is not None and teacher.kind == "train")


def answer_config(teacher: TeacherSection, recipe: Recipe, prompts_temperature: float) -> dict[str, Any]:
    """A distill-data config: how the teacher answers (its model is bound as the ``teacher`` input)."""
    cfg: dict[str, Any] = {
        "temperature": prompts_temperature,
        "max_new_tokens": teacher.max_new_tokens,
        "batch_size": teacher.batch_size,
        "device": teacher.device,
        "task": recipe.data.task,
    }
    if teacher.system_prompt is not None:
        cfg["system_prompt"] = teacher.system_prompt
    if teacher.min_accuracy is not None:
        cfg["min_teacher_accuracy"] = teacher.min_accuracy
    return cfg


def teacher_inputs(ctx: PlanContext, cfg: dict[str, Any], teacher: TeacherSection) -> dict[str, Binding]:
    """An endpoint teacher goes into the config; a local one is bound to the ``teacher`` artifact."""
    if teacher.endpoint is not None:
        cfg["endpoint"] = teacher.endpoint
        return {}
    return {"teacher": "teacher"}


@phase("data", order=10)
def plan_data(ctx: PlanContext) -> None:
    """The splits (generated, or the recipe's files) and the prompts the teacher answers."""
    planner, data = ctx.planner, ctx.recipe.data
    if data.task:
        planner.add("task-data", "task-data", task_data_config(ctx.recipe, data.variant), provides=DATA_SPLITS)
    else:
        for split in DATA_SPLITS:
            planner.give(split, getattr(data, split), "dataset")
    planner.alias("prompts", "train")
    if data.extra_train:
        extra = [Given(path, "dataset") for path in data.extra_train]
        planner.add("merge-data", "merge-data", {}, {"sources": ["train", *extra]}, {"train": "prompts"})


@phase("teacher", order=20)
def plan_teacher(ctx: PlanContext) -> None:
    """A teacher trained by the recipe (on every ``teacher_variants`` of the task), or a local folder."""
    recipe, planner = ctx.recipe, ctx.planner
    teacher = recipe.teacher
    if teacher is None:
        return
    if teacher.kind != "train" and recipe.data.teacher_variants:
        raise ctx.error(
            "data.teacher_variants", "only a teacher trained by the recipe (teacher.train) learns extra task variants"
        )
    if teacher.kind == "folder":
        planner.give("teacher", teacher.folder, "hf-model")
    if teacher.kind != "train":
        return
    assert teacher.train is not None
    planner.alias("teacher-data", "train")
    extra = [v for v in dict.fromkeys(recipe.data.teacher_variants) if v != recipe.data.variant]
    if extra:
        sources: list[str | Given] = ["train"]
        for variant in extra:
            cfg = task_data_config(recipe, variant)
            planner.add(f"task-data@{variant}", "task-data", cfg, provides={"train": f"train-{variant}"})
            sources.append(f"train-{variant}")
        merged = {"require_response": True}
        planner.add("merge-data@teacher", "merge-data", merged, {"sources": sources}, {"train": "teacher-data"})
    inputs = {"data": "teacher-data", **validation_input(ctx)}
    planner.add("train-teacher", "train-teacher", dict(teacher.train), inputs, {"model": "teacher"})


@phase("distill", order=30)
def plan_distill(ctx: PlanContext) -> None:
    """Stage 1 of distillation: the teacher answers the prompts; without a teacher the student learns them."""
    recipe, planner = ctx.recipe, ctx.planner
    teacher = recipe.teacher
    planner.alias("student-data", "prompts")
    if teacher is None:
        return
    cfg = answer_config(teacher, recipe, teacher.temperature)
    if teacher.limit is not None:
        cfg["limit"] = teacher.limit
    inputs: dict[str, Binding] = {"prompts": "prompts", **teacher_inputs(ctx, cfg, teacher)}
    planner.add("distill-data", "distill-data", cfg, inputs, {"dataset": "student-data"})


@phase("student", order=40)
def plan_student(ctx: PlanContext) -> None:
    """Stage 2: the student learns the teacher's answers; ``train: false`` uses ``model`` as it is."""
    planner = ctx.planner
    student = dict(ctx.recipe.student)
    if not student.pop("train", True):
        if set(student) != {"model"}:
            raise ctx.error("student", "with 'train: false' give only 'model' (a local model folder)")
        planner.give("model", student["model"], "hf-model")
        return
    inputs: dict[str, Binding] = {"data": "student-data", **validation_input(ctx)}
    if planner.has("teacher"):
        inputs["teacher"] = "teacher"  # tokenizer for an initialised student, logit KD, parameter count
    inputs.update(search_binding(ctx, "student"))
    planner.add("train-student", "train-student", student, inputs, {"model": "model"})


@phase("finetune", order=50)
def plan_finetune(ctx: PlanContext) -> None:
    """Full / LoRA / QLoRA on the task data; ``merge: false`` also keeps the adapter and its base."""
    finetune = ctx.recipe.finetune
    if finetune is None:
        return
    provides = {"model": "model"}
    if finetune.get("merge", True) is False:
        provides.update(adapter="adapter", base="base")
    inputs: dict[str, Binding] = {
        "model": "model",
        "data": "train",
        **validation_input(ctx),
        **search_binding(ctx, "finetune"),
    }
    ctx.planner.add("finetune", "finetune", dict(finetune), inputs, provides)


@phase("reference", order=60)
def plan_reference(ctx: PlanContext) -> None:
    """The fp32 student build (the pre-quantization reference) and, when measured, the teacher's build."""
    planner, ev = ctx.planner, ctx.recipe.evaluation
    planner.add("convert", "convert", {}, {"model": "model"}, {"model": "reference"})
    if not evaluate_teacher(ctx):
        return
    if not planner.has("teacher"):
        raise ctx.error("evaluation.teacher", "only a local teacher (train or folder) can be measured")
    cfg = {"precision": ev.teacher_precision, "execution_provider": ev.teacher_execution_provider}
    planner.add("convert@teacher", "convert", cfg, {"model": "teacher"}, {"model": "teacher-reference"})


@phase("holdout", order=70)
def plan_holdout(ctx: PlanContext) -> None:
    """The hold-out set every variant is scored on: ``evaluation.holdout``, answered by the teacher if any."""
    recipe, planner = ctx.recipe, ctx.planner
    holdout, teacher = recipe.evaluation.holdout, recipe.teacher
    if not holdout:
        return
    if teacher is None:
        planner.give("holdout", holdout, "dataset")  # must carry the answers (checked by the evaluate stage)
        return
    cfg = answer_config(teacher, recipe, 0.0)
    inputs: dict[str, Binding] = {"prompts": Given(holdout, "dataset"), **teacher_inputs(ctx, cfg, teacher)}
    planner.add("label-holdout", "distill-data", cfg, inputs, {"dataset": "holdout"})
