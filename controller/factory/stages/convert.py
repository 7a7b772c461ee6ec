"""Stage ``convert``: a Hugging Face folder -> an onnxruntime-genai model folder (model builder).

The pipeline uses it for the full-precision reference builds (the pre-quantization student and the
teacher, measured beside the deployed variants); ``quantize`` builds each profile's variant.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import Field

from controller.factory.builder import build_og_model, builder_supports, folder_size, supported_combos_text
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
from shared.errors import RecipeError
from shared.profiles import Precision

log = logging.getLogger(__name__)

OptionValue = str | int | float | bool | list[str]


class ConvertConfig(StageConfig):
    # Earlier stage output holding the Hugging Face folder (or an absolute folder path).
    model: str = "model"
    precision: Precision = "fp32"
    execution_provider: str = "cpu"
    int4_block_size: int = Field(32, ge=16)
    int4_accuracy_level: int = Field(4, ge=0, le=4)
    # Passed to the builder as --extra_options k=v (e.g. op_types_to_quantize: [MatMul, Gather]).
    extra_options: dict[str, OptionValue] = Field(default_factory=dict)
    timeout_s: int = Field(0, ge=0)


def builder_options(precision: str, block_size: int, accuracy_level: int, extra: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if precision == "int4":
        options.update(block_size=block_size, accuracy_level=accuracy_level)
    options.update(extra)
    return options


def check_builder_combo(precision: str, ep: str, field: str, source: str = "recipe") -> None:
    if not builder_supports(precision, ep):
        raise RecipeError(
            source,
            field,
            f"the onnxruntime-genai model builder cannot build {precision} for execution provider '{ep}' "
            f"(it builds: {supported_combos_text()}); give the profile an olive_workflow for this target",
        )


@register_stage
class ConvertStage(Stage):
    name = "convert"
    config_cls = ConvertConfig
    version = "1"
    inputs = (Port("model", "hf-model"),)
    outputs = (Port("model", "onnx-model"),)
    resources = Resources(num_cpus=1, memory_mb=4096)  # the model builder loads the whole model

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, ConvertConfig)
        source = ctx_extras.get("recipe_source", "recipe")
        check_builder_combo(config.precision, config.execution_provider, f"{self.name}.precision", source)
        if os.path.isabs(config.model) and not os.path.isdir(config.model):
            raise RecipeError(source, f"{self.name}.model", f"model folder '{config.model}' does not exist")

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, ConvertConfig)
        hf_dir = resolve_input(ctx, config.model)
        ctx.progress(Progress(self.name, 0, 1, message=f"building {config.precision}/{config.execution_provider}"))
        out = build_og_model(
            hf_dir,
            ctx.work_dir / "model",
            config.precision,
            config.execution_provider,
            builder_options(config.precision, config.int4_block_size, config.int4_accuracy_level, config.extra_options),
            is_cancelled=ctx.is_cancelled,
            timeout_s=config.timeout_s,
            stage=self.name,
        )
        ctx.progress(Progress(self.name, 1, 1, message="built"))
        return StageResult(
            outputs={"model": out},
            metrics={"size_bytes": folder_size(out), "precision": config.precision},
        )
