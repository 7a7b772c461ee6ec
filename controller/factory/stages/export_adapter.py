"""Stage ``export-adapter``: a peft LoRA adapter -> a base onnxruntime-genai model taking LoRA weights as
inputs + a runtime-switchable ``.onnx_adapter`` (see ``controller/factory/lora_export.py``).

Outputs ``model`` (the variant folder; the adapter file is inside it under ``adapters/NAME.onnx_adapter``
so the evaluation and the agents find it) and ``adapter`` (that file). Because the registry stores files
by content hash, a later version that only changes the adapter shares every base file with the earlier
one: an agent that keeps its blobs downloads just the adapter (a few MB).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from controller.factory.builder import build_og_model, check_runtime_target, folder_size
from controller.factory.lora_export import lora_node_names, make_lora_inputs, write_adapter
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
from controller.factory.stages.convert import OptionValue, builder_options, check_builder_combo
from shared.profiles import Precision, Runtime

log = logging.getLogger(__name__)


class ExportAdapterConfig(StageConfig):
    profile: str = ""
    base: str = "base"
    adapter: str = "adapter"
    adapter_name: str = Field("default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    precision: Precision = "fp32"
    execution_provider: str = "cpu"
    # The runtime the variant is built for: it must apply runtime adapters (see RUNTIME_TARGETS).
    runtime: Runtime = "ort-genai"
    int4_block_size: int = Field(32, ge=16)
    int4_accuracy_level: int = Field(4, ge=0, le=4)
    extra_options: dict[str, OptionValue] = Field(default_factory=dict)
    timeout_s: int = Field(0, ge=0)


@register_stage
class ExportAdapterStage(Stage):
    name = "export-adapter"
    config_cls = ExportAdapterConfig
    version = "1"
    inputs = (Port("base", "hf-model"), Port("adapter", "adapter"))
    outputs = (Port("model", "onnx-model"), Port("adapter", "onnx-adapter"))
    resources = Resources(num_cpus=1, memory_mb=4096)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, ExportAdapterConfig)
        source = ctx_extras.get("recipe_source", "recipe")
        field = f"profiles.{config.profile}.runtime" if config.profile else f"{self.name}.runtime"
        check_runtime_target(config.runtime, field, source, runtime_adapter=True)
        check_builder_combo(config.precision, config.execution_provider, f"{self.name}.precision", source)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, ExportAdapterConfig)
        base, adapter = resolve_input(ctx, config.base), resolve_input(ctx, config.adapter)
        options = builder_options(
            config.precision, config.int4_block_size, config.int4_accuracy_level, config.extra_options
        )
        options["adapter_path"] = str(adapter)
        if config.precision in ("int4", "int8"):
            excluded = lora_node_names(base, adapter)
            given = options.get("nodes_to_exclude", [])
            options["nodes_to_exclude"] = [*(given.split(",") if isinstance(given, str) else given), *excluded]
        ctx.progress(Progress(self.name, 0, 2, message=f"building {config.precision} base with LoRA inputs"))
        out = build_og_model(
            base,
            ctx.work_dir / "model",
            config.precision,
            config.execution_provider,
            options,
            is_cancelled=ctx.is_cancelled,
            timeout_s=config.timeout_s,
            stage=self.name,
        )
        weights = make_lora_inputs(out)
        path = write_adapter(weights, out / "adapters" / f"{config.adapter_name}.onnx_adapter")
        ctx.progress(Progress(self.name, 2, 2, message=f"adapter {path.name}: {path.stat().st_size} bytes"))
        return StageResult(
            outputs={"model": out, "adapter": path},
            metrics={
                "adapter_bytes": path.stat().st_size,
                "lora_tensors": len(weights),
                "size_bytes": folder_size(out),
                "precision": config.precision,
                "profile": config.profile,
                "runtime": config.runtime,
            },
        )
