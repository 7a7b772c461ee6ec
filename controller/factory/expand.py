"""Recipe -> pipeline: the steps, their configs and how they are wired.

    task-data | (files)                       the data splits
    merge-data                                + extra training prompts (retrain), if any
    train-teacher                             a teacher trained by the recipe (demo), if any
    distill-data                              stage 1: the teacher answers the training prompts
    train-student                             stage 2: the student learns the teacher's answers
    finetune                                  optional: full / LoRA / QLoRA on the task data
    convert                                   the student at fp32 (the pre-quantization reference)
    convert@teacher                           the teacher built for measurement (when evaluated)
    quantize@<profile>, evaluate@<profile>    one variant per device profile, measured on the test split
    (export-adapter@<profile>                 instead of quantize when finetune.merge is false: the base
                                              model + a runtime-switchable .onnx_adapter)
    evaluate@student-fp32, evaluate@teacher   the references of the seed table
    publish                                   all variants as one signed registry version

Changing one profile changes only that profile's quantize/evaluate configs, so only they rerun.
"""

from __future__ import annotations

import os
from typing import Any

from controller.factory.pipeline import PipelineStep
from controller.factory.recipe import Recipe
from shared.errors import RecipeError, UnknownProfile
from shared.profiles import DeviceProfile


class _Steps:
    def __init__(self) -> None:
        self.steps: list[PipelineStep] = []

    def add(self, sid: str, stage: str, config: dict[str, Any], needs: list[str], profile: str = "") -> str:
        unique = list(dict.fromkeys(n for n in needs if n))
        self.steps.append(PipelineStep(sid, stage, config, unique, profile))
        return sid


def _teacher_lineage(recipe: Recipe) -> dict[str, Any]:
    t = recipe.teacher
    if t is None:
        return {"kind": "none"}
    if t.kind == "train":
        assert t.train is not None
        return {"kind": "trained", "spec": t.train.get("spec", {})}
    if t.kind == "folder":
        return {"kind": "folder", "folder": t.folder}
    assert t.endpoint is not None
    return {"kind": "endpoint", "base_url": t.endpoint.get("base_url", ""), "model": t.endpoint.get("model", "")}


def expand(
    recipe: Recipe,
    profiles: dict[str, DeviceProfile],
    *,
    job_id: str = "",
    drift_event_id: str = "",
    source: str = "<recipe>",
) -> list[PipelineStep]:
    b = _Steps()
    data = recipe.data
    # --- data ------------------------------------------------------------------------------------------
    if data.task:
        b.add("task-data", "task-data", _task_data_config(recipe, data.variant), [])
        train_ref, val_ref, test_ref = "task-data.train", "task-data.validation", "task-data.test"
        data_needs = ["task-data"]
    else:
        train_ref, val_ref, test_ref = data.train, data.validation, data.test
        data_needs = []
    prompts_ref, prompt_needs = train_ref, list(data_needs)
    if data.extra_train:
        b.add("merge-data", "merge-data", {"sources": [train_ref, *data.extra_train]}, data_needs)
        prompts_ref, prompt_needs = "merge-data.train", [*data_needs, "merge-data"]
    val = {"validation": val_ref} if val_ref else {}

    # --- teacher and distillation ----------------------------------------------------------------------
    teacher = recipe.teacher
    teacher_ref, teacher_needs = "", []
    student_data, student_needs = prompts_ref, list(prompt_needs)
    if teacher is not None:
        if teacher.kind == "train":
            assert teacher.train is not None
            teacher_data, teacher_data_needs = _teacher_data(b, recipe, train_ref, data_needs, source)
            cfg = {"data": teacher_data, **val, **teacher.train}
            teacher_needs = [b.add("train-teacher", "train-teacher", cfg, teacher_data_needs)]
            teacher_ref = "train-teacher.model"
        elif recipe.data.teacher_variants:
            raise RecipeError(source, "data.teacher_variants", "only a teacher trained by the recipe (teacher.train) "
                              "learns extra task variants")  # fmt: skip
        elif teacher.kind == "folder":
            teacher_ref = teacher.folder
        distill: dict[str, Any] = {
            "prompts": prompts_ref,
            "temperature": teacher.temperature,
            "max_new_tokens": teacher.max_new_tokens,
            "batch_size": teacher.batch_size,
            "device": teacher.device,
            "task": data.task,
        }
        if teacher.system_prompt is not None:
            distill["system_prompt"] = teacher.system_prompt
        if teacher.limit is not None:
            distill["limit"] = teacher.limit
        if teacher.endpoint is not None:
            distill["endpoint"] = teacher.endpoint
        else:
            distill["teacher"] = teacher_ref
        b.add("distill-data", "distill-data", distill, [*prompt_needs, *teacher_needs])
        student_data, student_needs = "distill-data.dataset", ["distill-data", *data_needs]

    # --- student, fine-tuning --------------------------------------------------------------------------
    student = dict(recipe.student)
    if student.pop("train", True):
        cfg = {"data": student_data, **val, **student}
        if teacher_ref and "teacher" not in cfg:
            cfg["teacher"] = teacher_ref  # tokenizer for an initialised student, logit KD, parameter count
        model_ref = b.add("train-student", "train-student", cfg, [*student_needs, *teacher_needs]) + ".model"
        model_needs = ["train-student"]
    else:
        if set(student) != {"model"}:
            raise RecipeError(source, "student", "with 'train: false' give only 'model' (a local model folder)")
        model_ref, model_needs = student["model"], []
    if recipe.finetune is not None:
        cfg = {"model": model_ref, "data": train_ref, **val, **recipe.finetune}
        model_ref = b.add("finetune", "finetune", cfg, [*model_needs, *data_needs]) + ".model"
        model_needs = ["finetune"]

    # --- conversion, per-profile variants, evaluation --------------------------------------------------
    ev = recipe.evaluation
    common = {
        "data": test_ref,
        "task": data.task,
        "limit": ev.limit,
        "max_new_tokens": ev.max_new_tokens,
        "threads": ev.threads,
        "golden": ev.golden,
        "warmup": ev.warmup,
    }
    b.add("convert", "convert", {"model": model_ref}, model_needs)
    evaluate_teacher = ev.teacher if ev.teacher is not None else (teacher is not None and teacher.kind == "train")
    if evaluate_teacher:
        if not teacher_ref:
            raise RecipeError(source, "evaluation.teacher", "only a local teacher (train or folder) can be measured")
        b.add(
            "convert@teacher",
            "convert",
            {
                "model": teacher_ref,
                "precision": ev.teacher_precision,
                "execution_provider": ev.teacher_execution_provider,
            },
            teacher_needs,
        )
    holdout_ref, holdout_needs = _holdout_data(b, recipe, teacher_ref, teacher_needs)
    parent = str(recipe.lineage.get("parent_version", "")) if holdout_ref else ""
    on_holdout = {**common, "data": holdout_ref, "limit": 0, "golden": 0, "role": "holdout"}
    # finetune with merge: false keeps a runtime-switchable LoRA adapter in every variant
    runtime_adapter = recipe.finetune is not None and recipe.finetune.get("merge", True) is False
    names: list[str] = []
    variants = []
    for i, entry in enumerate(recipe.profile_entries()):
        if entry.name in names:
            raise RecipeError(source, f"profiles[{i}]", f"profile '{entry.name}' is listed twice")
        if entry.name not in profiles:
            raise RecipeError(source, f"profiles[{i}]", UnknownProfile(entry.name, list(profiles)).message)
        names.append(entry.name)
        prof = profiles[entry.name]
        precision = entry.precision or prof.precision
        qcfg = {
            "profile": prof.name,
            "precision": precision,
            "execution_provider": prof.execution_provider,
            "runtime": prof.runtime,
            "int4_block_size": entry.int4_block_size or prof.int4_block_size,
            "int4_accuracy_level": (
                entry.int4_accuracy_level if entry.int4_accuracy_level is not None else prof.int4_accuracy_level
            ),
            "extra_options": entry.builder_options,
            "olive_workflow": entry.olive_workflow if entry.olive_workflow is not None else prof.olive_workflow,
            "model": model_ref,
            "reference": "convert.model",
        }
        if runtime_adapter:
            if qcfg["olive_workflow"] is not None:
                raise RecipeError(
                    source,
                    f"profiles[{i}]",
                    "a runtime LoRA adapter (finetune.merge: false) is "
                    "built by the model builder; this profile's olive_workflow cannot be used",
                )
            acfg = {
                k: qcfg[k]
                for k in (
                    "profile",
                    "precision",
                    "execution_provider",
                    "int4_block_size",
                    "int4_accuracy_level",
                    "extra_options",
                )
            }
            acfg.update(base="finetune.base", adapter="finetune.adapter", adapter_name=recipe.name)
            q = b.add(f"export-adapter@{prof.name}", "export-adapter", acfg, ["finetune"], prof.name)
        else:
            q = b.add(f"quantize@{prof.name}", "quantize", qcfg, [*model_needs, "convert"], prof.name)
        e = b.add(
            f"evaluate@{prof.name}",
            "evaluate",
            {
                **common,
                "model": f"{q}.model",
                "role": "variant",
                "profile": prof.name,
                "label": prof.name,
                "precision": precision,
                "execution_provider": prof.execution_provider,
            },
            [q, *data_needs],
            prof.name,
        )
        variants.append(
            {
                "profile": prof.name,
                "precision": precision,
                "execution_provider": prof.execution_provider,
                "runtime": prof.runtime,
                "model": f"{q}.model",
                "evaluation": f"{e}.metrics",
                "golden": f"{e}.golden",
            }
        )
        variants[-1]["_needs"] = [q, e]
        if holdout_ref:
            holdout = {**on_holdout, "profile": prof.name, "precision": precision}
            h = b.add(
                f"evaluate-holdout@{prof.name}",
                "evaluate",
                {**holdout, "model": f"{q}.model", "label": f"{prof.name} on the hold-out"},
                [q, *holdout_needs],
                prof.name,
            )
            variants[-1]["holdout_evaluation"] = f"{h}.metrics"
            variants[-1]["_needs"].append(h)
        if parent:
            pv = b.add(
                f"parent@{prof.name}",
                "registry-variant",
                {"name": recipe.name, "version": parent, "profile": prof.name},
                [],
                prof.name,
            )
            label = f"{prof.name} {recipe.name}:{parent} on the hold-out"
            h = b.add(
                f"evaluate-parent@{prof.name}",
                "evaluate",
                {**on_holdout, "profile": prof.name, "model": f"{pv}.model", "label": label},
                [pv, *holdout_needs],
                prof.name,
            )
            variants[-1]["parent_holdout_evaluation"] = f"{h}.metrics"
            variants[-1]["_needs"].append(h)
    if ev.reference:
        b.add(
            "evaluate@student-fp32",
            "evaluate",
            {**common, "model": "convert.model", "role": "reference", "label": "student-fp32", "precision": "fp32"},
            ["convert", *data_needs],
        )
    if evaluate_teacher:
        b.add(
            "evaluate@teacher",
            "evaluate",
            {
                **common,
                "model": "convert@teacher.model",
                "role": "teacher",
                "label": f"teacher-{ev.teacher_precision}",
                "precision": ev.teacher_precision,
                "execution_provider": ev.teacher_execution_provider,
            },
            ["convert@teacher", *data_needs],
        )

    # --- publish ---------------------------------------------------------------------------------------
    lineage: dict[str, Any] = {
        "teacher": _teacher_lineage(recipe),
        "student": {k: v for k, v in recipe.student.items() if k in ("init", "model", "method")},
        "finetune": (recipe.finetune or {}).get("method", ""),
        "recipe_name": recipe.name,
        "recipe_hash": recipe.recipe_hash(),
        "parent_version": "",
        "drift_event_id": drift_event_id,
        "job_id": job_id,
        **recipe.lineage,
    }
    needs = [n for v in variants for n in v.pop("_needs")]
    hashes = {"data_hash": student_data}  # the student's training data, hashed at publish time
    if not os.path.isabs(student_data):
        needs.append(student_data.split(".")[0])  # an earlier step's output
    b.add(
        "publish",
        "publish",
        {"name": recipe.name, "variants": variants, "lineage": lineage, "lineage_hashes": hashes},
        needs,
    )
    return b.steps


def _task_data_config(recipe: Recipe, variant: str) -> dict[str, Any]:
    data = recipe.data
    return {
        "task": data.task,
        "variant": variant,
        "train_size": data.train_size,
        "validation_size": data.validation_size,
        "test_size": data.test_size,
        "seed": data.seed,
    }


def _teacher_data(
    b: _Steps, recipe: Recipe, train_ref: str, data_needs: list[str], source: str
) -> tuple[str, list[str]]:
    """The recipe-trained teacher's training data: the task's train split in every ``data.teacher_variants``."""
    data = recipe.data
    extra = [v for v in dict.fromkeys(data.teacher_variants) if v != data.variant]
    if not extra:
        return train_ref, list(data_needs)
    sources, needs = [train_ref], list(data_needs)
    for variant in extra:
        needs.append(b.add(f"task-data@{variant}", "task-data", _task_data_config(recipe, variant), []))
        sources.append(f"task-data@{variant}.train")
    merged = b.add("merge-data@teacher", "merge-data", {"sources": sources, "require_response": True}, needs)
    return f"{merged}.train", [*data_needs, merged]


def _holdout_data(b: _Steps, recipe: Recipe, teacher_ref: str, teacher_needs: list[str]) -> tuple[str, list[str]]:
    """The hold-out set every variant is scored on: ``evaluation.holdout``, answered by the teacher if any."""
    holdout, teacher = recipe.evaluation.holdout, recipe.teacher
    if not holdout:
        return "", []
    if teacher is None:
        return holdout, []  # the file must carry the expected answers (checked by the evaluate stage)
    cfg: dict[str, Any] = {
        "prompts": holdout,
        "temperature": 0.0,
        "max_new_tokens": teacher.max_new_tokens,
        "batch_size": teacher.batch_size,
        "device": teacher.device,
        "task": recipe.data.task,
    }
    if teacher.system_prompt is not None:
        cfg["system_prompt"] = teacher.system_prompt
    if teacher.endpoint is not None:
        cfg["endpoint"] = teacher.endpoint
    else:
        cfg["teacher"] = teacher_ref
    return b.add("label-holdout", "distill-data", cfg, list(teacher_needs)) + ".dataset", ["label-holdout"]
