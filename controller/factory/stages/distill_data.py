"""Stage ``distill-data`` (distillation stage 1): the teacher answers the training prompts -> synthetic JSONL.

The teacher is a local Hugging Face folder (``teacher: <path or earlier output>``) or an OpenAI-compatible
endpoint (``endpoint: {base_url, model, api_key_env}``). Output ``dataset``: prompt turns + the teacher's
answers. Where the prompts carry responses of their own (references), the teacher is scored against them
(the task's scorer with ``task`` set, else exact match after trimming): ``teacher_reference_accuracy`` and
``teacher_reference_n``. Below ``min_teacher_accuracy`` the stage warns (log, progress line and the metric
``warnings``): a student cannot learn what its teacher gets wrong.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
from controller.factory.tasks import get_task, read_jsonl, write_jsonl
from controller.factory.tasks.datasets import Example, file_sha256
from controller.factory.teacher import EndpointSettings, EndpointTeacher, LocalTeacher
from controller.factory.training.refs import check_dataset_ref, check_model_ref, resolve_ref, source_of
from shared.errors import NotFound, RecipeError, SlmopsError

log = logging.getLogger(__name__)


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str | None = None
    concurrency: int = Field(4, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    # Validation sends one GET {base_url}/models to check the endpoint answers (any HTTP reply passes).
    probe_at_validation: bool = True

    def settings(self) -> EndpointSettings:
        return EndpointSettings(
            self.base_url,
            self.model,
            self.api_key_env,
            self.concurrency,
            self.timeout_s,
            self.max_retries,
            self.backoff_s,
        )


class DistillDataConfig(StageConfig):
    # JSONL of prompts (responses, if any, are only used to report the teacher's agreement).
    prompts: str = "train"
    # Local teacher: a Hugging Face folder path or an earlier output (e.g. "train-teacher.model").
    teacher: str | None = None
    endpoint: EndpointConfig | None = None
    system_prompt: str | None = None
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(32, gt=0)
    limit: int | None = Field(None, gt=0)
    device: str = "auto"
    task: str = ""
    drop_empty: bool = True
    # Warn when the teacher matches fewer of the prompts' references than this (0 never warns).
    min_teacher_accuracy: float = Field(0.6, ge=0, le=1)

    @model_validator(mode="after")
    def _one_teacher(self) -> DistillDataConfig:
        if (self.teacher is None) == (self.endpoint is None):
            raise ValueError(
                "give exactly one of 'teacher' (a local model folder) or 'endpoint' (an OpenAI-compatible URL)"
            )
        return self


def _with_system(ex: Example, system_prompt: str | None) -> Example:
    if not system_prompt or any(m["role"] == "system" for m in ex.messages):
        return ex
    return Example([{"role": "system", "content": system_prompt}, *ex.messages], ex.response, ex.extra)


@register_stage
class DistillDataStage(Stage):
    name = "distill-data"
    config_cls = DistillDataConfig
    version = "1"
    inputs = (
        Port("prompts", "dataset"),
        Port("teacher", "hf-model", optional=True, doc="a local teacher (else config 'endpoint')"),
    )
    outputs = (Port("dataset", "dataset"),)
    resources = Resources(num_cpus=2, memory_mb=4096)

    def resources_for(self, config: StageConfig) -> Resources:
        assert isinstance(config, DistillDataConfig)
        if config.endpoint is not None:
            return Resources(num_cpus=1, memory_mb=512)  # the teacher runs elsewhere
        gpus = 1.0 if config.device == "cuda" else 0.0
        return Resources(num_cpus=self.resources.num_cpus, num_gpus=gpus, memory_mb=self.resources.memory_mb)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, DistillDataConfig)
        source = source_of(ctx_extras)
        check_dataset_ref(config.prompts, f"{self.name}.prompts", source, require_response=False)
        check_model_ref(config.teacher, f"{self.name}.teacher", source)
        if config.task:
            try:
                get_task(config.task)
            except NotFound as exc:
                raise RecipeError(source, f"{self.name}.task", exc.message) from exc
        if config.endpoint is not None:
            teacher = EndpointTeacher(config.endpoint.settings(), None)  # also checks the API key variable
            try:
                if config.endpoint.probe_at_validation:
                    teacher.probe()
            finally:
                teacher.close()

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, DistillDataConfig)
        prompts_path = resolve_ref(ctx, config.prompts)
        examples = read_jsonl(prompts_path, require_response=False, limit=config.limit)
        asked = [_with_system(ex, config.system_prompt) for ex in examples]
        total = len(asked)

        def on_progress(done: int, n: int) -> None:
            ctx.progress(Progress(self.name, done, n, message="teacher answering"))

        started = time.monotonic()
        metrics: dict[str, Any] = {"prompts": total}
        if config.endpoint is not None:
            cache_dir = ctx.cache_dir / "teacher-answers"
            teacher = EndpointTeacher(config.endpoint.settings(), cache_dir)
            try:
                answers = teacher.answer(
                    asked, config.temperature, config.max_new_tokens, on_progress, ctx.is_cancelled
                )
            finally:
                teacher.close()
            metrics.update(teacher="endpoint", endpoint=config.endpoint.base_url, requests=teacher.requests)
            metrics["cache_hits"] = teacher.cache_hits
        else:
            assert config.teacher is not None
            folder = resolve_ref(ctx, config.teacher)
            check_model_ref(str(folder), f"{self.name}.teacher", "recipe")
            if config.device != "cuda":
                from controller.factory.training.setup import start_training

                start_training(ctx, self.name, 0)  # the local teacher generates on these threads
            local = LocalTeacher(folder, config.batch_size, config.device)
            answers = local.answer(asked, config.temperature, config.max_new_tokens, on_progress, ctx.is_cancelled)
            metrics.update(teacher=str(folder))
        ctx.check_cancelled()
        out: list[Example] = []
        for ex, answer in zip(examples, answers, strict=True):
            if config.drop_empty and not answer.strip():
                continue
            extra = dict(ex.extra)
            if ex.response is not None:
                extra["reference"] = ex.response
            out.append(Example(ex.messages, answer.strip(), extra))
        if not out:
            raise SlmopsError(f"stage '{self.name}': the teacher gave no usable answer to {total} prompts")
        metrics.update(self._teacher_quality(config, ctx, examples, answers, prompts_path.name))
        dataset = write_jsonl(ctx.work_dir / "distilled.jsonl", out)
        metrics.update(
            examples=len(out),
            dropped=total - len(out),
            seconds=round(time.monotonic() - started, 2),
            data_hash=file_sha256(dataset),
        )
        log.info("distill-data: %d answers in %.1f s -> %s", len(out), metrics["seconds"], dataset)
        return StageResult(outputs={"dataset": dataset}, metrics=metrics)

    def _teacher_quality(
        self, config: DistillDataConfig, ctx: StageContext, examples: list[Example], answers: list[str], source: str
    ) -> dict[str, Any]:
        """Teacher accuracy against the references; a warning (log, progress, metrics) when it is weak."""
        figures = teacher_vs_references(config.task, examples, answers)
        if not figures:
            return {}
        accuracy, n = figures["teacher_reference_accuracy"], figures["teacher_reference_n"]
        log.info("distill-data: the teacher matches %.1f%% of %d references in %s", accuracy * 100, n, source)
        if accuracy < config.min_teacher_accuracy:
            warning = (
                f"the teacher matches only {accuracy:.1%} of {n} reference answers in {source} (below "
                f"the recipe's teacher.min_accuracy {config.min_teacher_accuracy:.0%}): the student learns the "
                "teacher's mistakes too; train the teacher longer or use a stronger one"
            )
            log.warning("distill-data: %s", warning)
            ctx.progress(Progress(self.name, 0, 0, message=f"warning: {warning}"))
            figures["warnings"] = [warning]
        return figures


def teacher_vs_references(task: str, examples: list[Example], answers: list[str]) -> dict[str, Any]:
    """The teacher's accuracy on the prompts that carry a reference answer ({} when none does)."""
    from controller.factory.evaluation.scoring import score_pairs

    refs = [(a, ex.response) for ex, a in zip(examples, answers, strict=True) if ex.response is not None]
    if not refs:
        return {}
    scored = score_pairs(task, refs)
    out: dict[str, Any] = {"teacher_reference_accuracy": scored["exact_match"], "teacher_reference_n": scored["n"]}
    if task:  # the names the bundled task's figures always had
        out["teacher_exact_match"] = scored["exact_match"]
        out["teacher_valid_json"] = scored["valid_json"]
    return out
