"""Stage ``evaluate``: measure one onnxruntime-genai model on the test split, in a child process.

Roles: ``variant`` (a profile's deployed build), ``reference`` (the pre-quantization student, fp32) and
``teacher`` (the teacher built at fp32), and ``holdout`` (a variant, or the parent version's, on held-out
production prompts). All are measured the same way so the report can compare them.

Hold-out rows say what they measure. When a teacher labelled the hold-out set (step ``label-holdout``), the
answers the model is compared with are the teacher's: that figure is *teacher agreement*. When the hold-out
file had answers of its own (kept by ``distill-data`` as each row's ``reference``), the model is also scored
against them (*accuracy vs references*); with every row answered that figure is the row's ``accuracy``
(``teacher_agreement`` and ``reference_accuracy`` are recorded beside it) and the label says so.
A variant whose execution provider this machine lacks (e.g. CUDA here) is recorded as skipped.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Literal

from pydantic import Field

from controller.factory.evaluation import run_evaluation
from controller.factory.stage import (
    Port,
    Progress,
    Resources,
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    register_stage,
)
from controller.factory.stageio import resolve_input
from controller.factory.training.refs import check_dataset_ref
from shared.errors import RecipeError

log = logging.getLogger(__name__)

# Execution providers that run on a GPU (a scheduler reserves one for the evaluation).
GPU_PROVIDERS = {"cuda", "dml", "webgpu", "NvTensorRtRtx"}


class EvaluateConfig(StageConfig):
    model: str = "model"
    # Earlier stage output (or absolute path) of the JSONL test set.
    data: str = "test"
    task: str = ""
    role: Literal["variant", "reference", "teacher", "holdout"] = "variant"
    profile: str = ""
    precision: str = ""
    label: str = ""
    limit: int = Field(0, ge=0)
    max_new_tokens: int = Field(64, gt=0)
    threads: int = Field(0, ge=0)
    execution_provider: str = "cpu"
    golden: int = Field(5, ge=0)
    warmup: int = Field(2, ge=0)
    timeout_s: int = Field(0, ge=0)


def provider_available(ep: str) -> bool:
    if ep == "cpu":
        return True
    import onnxruntime_genai as og

    check = {
        "cuda": "is_cuda_available",
        "dml": "is_dml_available",
        "webgpu": "is_webgpu_available",
        "qnn": "is_qnn_available",
        "openvino": "is_openvino_available",
    }.get(ep)
    try:
        return bool(check and getattr(og, check)())
    except Exception:
        return False


@register_stage
class EvaluateStage(Stage):
    name = "evaluate"
    config_cls = EvaluateConfig
    # 2: peak RSS from VmHWM (per process, not inherited across fork+exec); 3: generators get a random_seed
    # (latency without std::random_device's per-generator cost, see shared/genai_seed.py)
    version = "3"
    inputs = (Port("model", "onnx-model"), Port("data", "dataset"))
    outputs = (
        Port("metrics", "metrics"),
        Port("golden", "golden"),
        Port("predictions", "predictions", optional=True),
    )
    resources = Resources(num_cpus=1, memory_mb=2048)

    def resources_for(self, config: StageConfig) -> Resources:
        assert isinstance(config, EvaluateConfig)
        gpus = 1.0 if config.execution_provider in GPU_PROVIDERS else 0.0
        return Resources(num_cpus=max(1, config.threads), num_gpus=gpus, memory_mb=self.resources.memory_mb)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, EvaluateConfig)
        source = ctx_extras.get("recipe_source", "recipe")
        if os.path.isabs(config.data):
            # the test set needs prompts AND expected answers; errors name file, line and field
            check_dataset_ref(config.data, "evaluation: data.test", source, require_response=True)
        if config.task:
            from controller.factory.evaluation.scoring import known_tasks

            if config.task not in known_tasks():
                raise RecipeError(
                    source, "evaluate.task", f"unknown task '{config.task}' (known: {', '.join(known_tasks())})"
                )

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, EvaluateConfig)
        label = config.label or config.profile or config.role
        info = {"role": config.role, "profile": config.profile, "label": label, "precision": config.precision}
        metrics_path = ctx.work_dir / "metrics.json"
        if not provider_available(config.execution_provider):
            reason = f"execution provider '{config.execution_provider}' is not available on this machine"
            log.warning("not evaluating %s: %s", label, reason)
            result = {**info, "skipped": True, "reason": reason}
            metrics_path.write_text(json.dumps(result, indent=2))
            (ctx.work_dir / "golden.json").write_text("[]")
            return StageResult(
                outputs={"metrics": metrics_path, "golden": ctx.work_dir / "golden.json"}, metrics=result
            )

        def _progress(done: int, total: int) -> None:
            ctx.progress(Progress(self.name, done, total, message=f"evaluating {label}"))

        ctx.progress(Progress(self.name, 0, 0, message=f"evaluating {label}"))
        res = run_evaluation(
            resolve_input(ctx, config.model),
            resolve_input(ctx, config.data),
            ctx.work_dir / "eval",
            task=config.task,
            limit=config.limit,
            max_new_tokens=config.max_new_tokens,
            threads=config.threads,
            provider=config.execution_provider,
            golden=config.golden,
            warmup=config.warmup,
            timeout_s=config.timeout_s,
            is_cancelled=ctx.is_cancelled,
            on_progress=_progress,
            stage=self.name,
        )
        result = {**info, **res.metrics}
        if config.role == "holdout":
            labelled = "distill-data" in ctx.upstream_metrics  # the teacher answered the hold-out (label-holdout)
            result.update(holdout_figures(res, resolve_input(ctx, config.data), config.task, labelled, label))
            log.info("%s", result["label"])
        metrics_path.write_text(json.dumps(result, indent=2))
        golden_path = ctx.work_dir / "golden.json"
        golden_path.write_text(json.dumps(res.golden, indent=2))
        outputs = {"metrics": metrics_path, "golden": golden_path}
        if res.predictions_path:
            outputs["predictions"] = res.predictions_path
        return StageResult(outputs=outputs, metrics=result)


def _references(data_path: Any) -> list[str | None]:
    from controller.factory.tasks.datasets import read_jsonl

    return [
        ref if isinstance(ref := ex.extra.get("reference"), str) else None
        for ex in read_jsonl(data_path, require_response=True)
    ]


def holdout_figures(res: Any, data_path: Any, task: str, labelled: bool, label: str) -> dict[str, Any]:
    """Accuracy vs the hold-out file's own answers and agreement with the teacher, each named for what it is."""
    from controller.factory.evaluation.scoring import score_pairs

    if not labelled:  # the file's own answers: accuracy is accuracy
        n = int(res.metrics.get("n", 0))
        return {
            "measures": "accuracy_vs_references",
            "reference_accuracy": res.metrics["accuracy"],
            "reference_n": n,
            "label": f"{label}: accuracy vs references",
        }
    predictions = [json.loads(line) for line in res.predictions_path.read_text().splitlines() if line.strip()]
    refs = _references(data_path)[: len(predictions)]
    agreement = float(res.metrics["accuracy"])
    scored = [(p["prediction"], r) for p, r in zip(predictions, refs, strict=False) if r is not None]
    if not scored:
        return {"measures": "teacher_agreement", "teacher_agreement": agreement, "label": f"{label}: teacher agreement"}
    accuracy = score_pairs(task, scored)["exact_match"]
    out: dict[str, Any] = {"teacher_agreement": agreement, "reference_accuracy": accuracy, "reference_n": len(scored)}
    if len(scored) == len(predictions):  # every row has its own answer: the row reports true accuracy
        out.update(
            measures="accuracy_vs_references",
            accuracy=accuracy,
            label=f"{label}: accuracy vs references (teacher agreement {agreement:.1%})",
        )
    else:
        out.update(
            measures="teacher_agreement",
            label=f"{label}: teacher agreement ({accuracy:.1%} vs references on {len(scored)} of {len(predictions)})",
        )
    return out
