"""Stage ``quantize``: one device profile's variant, an onnxruntime-genai model folder at the profile's
precision and execution provider.

Paths, in order:
1. the profile carries an ``olive_workflow``: ``olive run`` with it (see ``controller/factory/olive.py``);
2. the profile is fp32 on CPU with no extra builder options: the fp32 reference build (``convert``) is
   reused as is (hardlinked, no second build);
3. otherwise the onnxruntime-genai model builder from the trained Hugging Face folder, with the profile's
   int4 block size and accuracy level.

``runtime`` (the profile's) is the runtime the variant is built for: validation checks it is one the factory
builds for (``RUNTIME_TARGETS`` in ``builder.py``: both load the onnxruntime-genai folder built here), the
built folder is checked to be in that runtime's format, and the runtime is reported in the step's metrics;
the plan takes the published variant's runtime from this config.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import Field

from controller.factory.builder import build_og_model, check_og_folder, check_runtime_target, folder_size
from controller.factory.olive import run_olive_workflow
from controller.factory.search.best import PORT_DOC, apply_search
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
from controller.factory.stageio import copy_tree_linked, resolve_input
from controller.factory.stages.convert import OptionValue, builder_options, check_builder_combo
from shared.errors import RecipeError
from shared.profiles import Precision, Runtime

log = logging.getLogger(__name__)


class QuantizeConfig(StageConfig):
    profile: str
    precision: Precision
    execution_provider: str = "cpu"
    runtime: Runtime = "ort-genai"
    int4_block_size: int = Field(32, ge=16)
    int4_accuracy_level: int = Field(4, ge=0, le=4)
    extra_options: dict[str, OptionValue] = Field(default_factory=dict)
    olive_workflow: dict[str, Any] | None = None
    # Earlier stage outputs: the trained Hugging Face folder, and the fp32 reference build.
    model: str = "model"
    reference: str = "convert.model"
    timeout_s: int = Field(0, ge=0)
    # A search step's best_config.json (its int4_block_size wins; left out of the cache key if unset).
    search: str | None = Field(None, exclude_if=lambda v: v is None)


@register_stage
class QuantizeStage(Stage):
    name = "quantize"
    config_cls = QuantizeConfig
    version = "1"
    inputs = (
        Port("model", "hf-model", doc="the trained Hugging Face folder the builder quantizes"),
        Port("reference", "onnx-model", optional=True, doc="the fp32 build (reused as is, or Olive's input)"),
        Port("search", "any", optional=True, doc=PORT_DOC),
    )
    outputs = (Port("model", "onnx-model"),)
    resources = Resources(num_cpus=1, memory_mb=4096)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, QuantizeConfig)
        source = ctx_extras.get("recipe_source", "recipe")
        check_runtime_target(config.runtime, f"profiles.{config.profile}.runtime", source)
        if config.olive_workflow is not None:
            if not config.olive_workflow.get("passes"):
                raise RecipeError(
                    source, f"profiles.{config.profile}.olive_workflow", "an Olive workflow needs 'passes'"
                )
            if config.olive_workflow.get("input", "onnx") not in ("onnx", "hf"):
                raise RecipeError(source, f"profiles.{config.profile}.olive_workflow.input", "must be 'onnx' or 'hf'")
            return
        check_builder_combo(config.precision, config.execution_provider, f"profiles.{config.profile}.precision", source)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, QuantizeConfig)
        config, searched = apply_search(config, "quantize", ctx, self.name)
        label = f"{config.profile}: {config.precision}/{config.execution_provider}"
        ctx.progress(Progress(self.name, 0, 1, message=label))
        out = ctx.work_dir / "model"
        if config.olive_workflow is not None:
            hf_dir = resolve_input(ctx, config.model) if config.olive_workflow.get("input") == "hf" else None
            built = run_olive_workflow(
                config.olive_workflow,
                resolve_input(ctx, config.reference),
                hf_dir,
                ctx.work_dir / "olive",
                is_cancelled=ctx.is_cancelled,
                timeout_s=config.timeout_s,
            )
            os.replace(built, out)
            path = "olive"
        elif self._reuses_reference(config, ctx):
            copy_tree_linked(resolve_input(ctx, config.reference), out)
            path = "reference"
        else:
            build_og_model(
                resolve_input(ctx, config.model),
                out,
                config.precision,
                config.execution_provider,
                builder_options(
                    config.precision, config.int4_block_size, config.int4_accuracy_level, config.extra_options
                ),
                is_cancelled=ctx.is_cancelled,
                timeout_s=config.timeout_s,
                stage=self.name,
            )
            path = "builder"
        # every path's result must be what the variant's runtime loads (today: an onnxruntime-genai folder)
        if check_runtime_target(config.runtime, "runtime", self.name)["format"] == "ort-genai":
            check_og_folder(out, self.name)
        ctx.progress(Progress(self.name, 1, 1, message=f"{label} built ({path})"))
        return StageResult(
            outputs={"model": out},
            metrics={
                "size_bytes": folder_size(out),
                "profile": config.profile,
                "precision": config.precision,
                "execution_provider": config.execution_provider,
                "runtime": config.runtime,
                "build_path": path,
                **({"searched": searched} if searched else {}),
            },
        )

    @staticmethod
    def _reuses_reference(config: QuantizeConfig, ctx: StageContext) -> bool:
        if config.precision != "fp32" or config.execution_provider != "cpu" or config.extra_options:
            return False
        try:
            resolve_input(ctx, config.reference)
        except Exception:
            return False
        return True
