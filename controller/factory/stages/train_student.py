"""Stage ``train-student`` (distillation stage 2): train the student on the teacher's answers.

The student is initialised from ``init`` (a :class:`ModelSpec`; tokenizer from ``tokenizer``, else from the
teacher, else learned from the data) or loaded from ``model`` (a local folder). ``method: sft`` trains on
the answers; ``method: logit_kd`` also matches the teacher's softened token distributions
(``alpha * KL * T^2 + (1 - alpha) * CE``) and needs a local teacher sharing the student's tokenizer.
Output ``model``.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any, Literal

from pydantic import Field, model_validator

from controller.factory.modeling import ModelSpec, count_parameters
from controller.factory.search.best import PORT_DOC, apply_search
from controller.factory.stage import (
    Port,
    Resources,
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    register_stage,
)
from controller.factory.training.loop import KDParams, train_causal_lm
from controller.factory.training.params import TrainParams, training_resources
from controller.factory.training.refs import (
    check_dataset_ref,
    check_device,
    check_model_ref,
    check_tokenizer_ref,
    resolve_ref,
    source_of,
)
from controller.factory.training.setup import (
    create_model,
    load_model,
    load_split,
    save_model,
    score_model,
    start_training,
)
from shared.errors import InvalidArgument

log = logging.getLogger(__name__)


class TrainStudentConfig(TrainParams):
    data: str = "dataset"
    validation: str | None = None
    init: ModelSpec | None = None
    model: str | None = None
    tokenizer: str | None = None
    teacher: str | None = None
    method: Literal["sft", "logit_kd"] = "sft"
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    vocab_size: int = 1000
    single_digit_tokens: bool = True
    task: str = ""
    test: str | None = None
    test_limit: int = 200
    # A search step's best_config.json: its values override the ones above (left out of the cache key if unset).
    search: str | None = Field(None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _check_student(self) -> TrainStudentConfig:
        if (self.init is None) == (self.model is None):
            raise ValueError("give exactly one of 'init' (an architecture + sizes) or 'model' (a local folder)")
        if self.method == "logit_kd" and not self.teacher:
            raise ValueError("method 'logit_kd' needs 'teacher' (a local model folder sharing the tokenizer)")
        return self


def check_same_vocab(student_tok: Any, teacher_tok: Any, teacher_ref: str) -> None:
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise InvalidArgument(
            f"logit distillation needs the teacher '{teacher_ref}' and the student to share one tokenizer, "
            "but their vocabularies differ; use method 'sft' or initialise the student with tokenizer: <teacher>"
        )


@register_stage
class TrainStudentStage(Stage):
    name = "train-student"
    config_cls = TrainStudentConfig
    version = "1"
    inputs = (
        Port("data", "dataset"),
        Port("validation", "dataset", optional=True),
        Port("test", "dataset", optional=True),
        Port("model", "hf-model", optional=True, doc="a model to train further (instead of init)"),
        Port("tokenizer", "hf-model", optional=True),
        Port("teacher", "hf-model", optional=True, doc="tokenizer source, logit KD, parameter count"),
        Port("search", "any", optional=True, doc=PORT_DOC),
    )
    outputs = (Port("model", "hf-model"),)
    resources = Resources(num_cpus=2, memory_mb=4096)

    def resources_for(self, config: StageConfig) -> Resources:
        assert isinstance(config, TrainStudentConfig)
        return training_resources(config, self.resources.memory_mb)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, TrainStudentConfig)
        source = source_of(ctx_extras)
        check_dataset_ref(config.data, f"{self.name}.data", source)
        check_dataset_ref(config.validation, f"{self.name}.validation", source)
        check_dataset_ref(config.test, f"{self.name}.test", source)
        for field in ("model", "teacher"):
            check_model_ref(getattr(config, field), f"{self.name}.{field}", source)
        check_tokenizer_ref(config.tokenizer, f"{self.name}.tokenizer", source)
        check_device(config.device, f"{self.name}.device", source)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, TrainStudentConfig)
        config, searched = apply_search(config, "student", ctx, self.name)
        start_training(ctx, self.name, config.num_threads)
        train = load_split(ctx, config.data)
        val = load_split(ctx, config.validation)
        teacher_dir = resolve_ref(ctx, config.teacher) if config.teacher else None
        if config.init is not None:
            tok_ref = config.tokenizer or config.teacher
            tok_dir = resolve_ref(ctx, tok_ref) if tok_ref else None
            folder = create_model(
                config.init,
                ctx.work_dir / "init",
                train,
                config.seed,
                tok_dir,
                config.vocab_size,
                config.single_digit_tokens,
            )
        else:
            assert config.model is not None
            folder = resolve_ref(ctx, config.model)
        model, tokenizer = load_model(folder)
        if config.init is not None:
            shutil.rmtree(folder, ignore_errors=True)  # the random init is not worth keeping
        teacher = kd = None
        if config.method == "logit_kd":
            assert teacher_dir is not None and config.teacher is not None
            teacher, teacher_tok = load_model(teacher_dir)
            check_same_vocab(tokenizer, teacher_tok, config.teacher)
            kd = KDParams(config.temperature, config.alpha)
        report = train_causal_lm(
            model,
            tokenizer,
            train,
            config,
            val,
            teacher=teacher,
            kd=kd,
            stage=self.name,
            progress=ctx.progress,
            check_cancelled=ctx.check_cancelled,
        )
        out = save_model(model, tokenizer, ctx.work_dir / "model")
        metrics: dict[str, Any] = {
            "parameters": count_parameters(out),
            "method": config.method,
            **report.metrics(),
        }
        if searched:
            metrics["searched"] = searched
        if teacher_dir is not None:
            metrics["teacher_parameters"] = count_parameters(teacher_dir)
        if config.task and config.test:
            metrics.update(score_model(model, tokenizer, config.task, load_split(ctx, config.test, config.test_limit)))
        log.info("train-student: %s", metrics)
        return StageResult(outputs={"model": out}, metrics=metrics)
