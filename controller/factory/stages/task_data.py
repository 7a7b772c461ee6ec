"""Stage ``task-data``: generate a bundled task's splits as JSONL (outputs ``train``, ``validation``, ``test``).

Deterministic for a given (task, variant, sizes, seed), so the runner's cache makes it free on reruns.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

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
from controller.factory.tasks import get_task, write_task_splits
from controller.factory.tasks.datasets import file_sha256
from controller.factory.training.refs import source_of
from shared.errors import NotFound, RecipeError

log = logging.getLogger(__name__)


class TaskDataConfig(StageConfig):
    task: str = "smart-building"
    variant: Literal["base", "shifted"] = "base"
    train_size: int = Field(2000, gt=0)
    validation_size: int = Field(200, gt=0)
    test_size: int = Field(200, gt=0)
    seed: int = 0


@register_stage
class TaskDataStage(Stage):
    name = "task-data"
    config_cls = TaskDataConfig
    version = "1"
    outputs = (Port("train", "dataset"), Port("validation", "dataset"), Port("test", "dataset"))
    resources = Resources(num_cpus=1, memory_mb=512)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, TaskDataConfig)
        try:
            get_task(config.task)
        except NotFound as exc:
            raise RecipeError(source_of(ctx_extras), f"{self.name}.task", exc.message) from exc

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, TaskDataConfig)
        sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
        ctx.progress(Progress(self.name, 0, 1, message=f"generating {config.task} ({config.variant})"))
        paths = write_task_splits(config.task, ctx.work_dir, sizes, config.seed, config.variant)
        metrics: dict[str, Any] = {
            "task": config.task,
            "variant": config.variant,
            **{f"{k}_size": v for k, v in sizes.items()},
        }
        metrics["data_hash"] = file_sha256(paths["train"])
        ctx.progress(Progress(self.name, 1, 1, message="done"))
        log.info("task-data: %s %s -> %s", config.task, sizes, ctx.work_dir)
        return StageResult(outputs=dict(paths), metrics=metrics)
