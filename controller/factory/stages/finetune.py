"""Stage ``finetune``: full, LoRA or QLoRA fine-tuning of a local model on prompt/response data.

Outputs ``model`` (a plain HF folder, the adapter merged in). With ``merge: false`` also ``adapter`` (the
peft adapter folder) and ``base`` (the base model it applies to), so a later stage can export a
runtime-switchable ``.onnx_adapter``. QLoRA needs a CUDA GPU: validation refuses it on other machines.
``engine: olive`` runs ``olive finetune`` (LoRA/QLoRA) instead of the built-in loop.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from controller.factory.modeling import count_parameters
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
from controller.factory.stageio import copy_tree_linked
from controller.factory.training.loop import train_causal_lm
from controller.factory.training.lora import apply_lora, check_qlora_supported, load_4bit_base, merge_adapter
from controller.factory.training.params import TrainParams, training_resources
from controller.factory.training.refs import (
    check_dataset_ref,
    check_device,
    check_model_ref,
    resolve_ref,
    source_of,
)
from controller.factory.training.setup import (
    load_model,
    load_split,
    load_tokenizer,
    save_model,
    score_model,
    start_training,
)
from shared.errors import RecipeError

log = logging.getLogger(__name__)


class FinetuneConfig(TrainParams):
    model: str = "model"
    data: str = "train"
    validation: str | None = None
    method: Literal["full", "lora", "qlora"] = "lora"
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    # None: peft's default modules for the architecture; "all-linear"; or module names.
    target_modules: list[str] | Literal["all-linear"] | None = None
    merge: bool = True
    engine: Literal["torch", "olive"] = "torch"
    task: str = ""
    test: str | None = None
    test_limit: int = 200
    # A search step's best_config.json: its values override the ones above (left out of the cache key if unset).
    search: str | None = Field(None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.method == "full" and not self.merge:
            raise ValueError("merge: false keeps an adapter, which only LoRA/QLoRA make (method is 'full')")
        if self.engine == "olive" and self.method == "full":
            raise ValueError("engine 'olive' fine-tunes with LoRA or QLoRA, not 'full'")
        return self


@register_stage
class FinetuneStage(Stage):
    name = "finetune"
    config_cls = FinetuneConfig
    version = "1"
    inputs = (
        Port("model", "hf-model"),
        Port("data", "dataset"),
        Port("validation", "dataset", optional=True),
        Port("test", "dataset", optional=True),
        Port("search", "any", optional=True, doc=PORT_DOC),
    )
    outputs = (
        Port("model", "hf-model", doc="the fine-tuned model (adapter merged in)"),
        Port("adapter", "adapter", optional=True, doc="merge: false only"),
        Port("base", "hf-model", optional=True, doc="merge: false only: the model the adapter applies to"),
    )
    resources = Resources(num_cpus=2, memory_mb=8192)

    def resources_for(self, config: StageConfig) -> Resources:
        assert isinstance(config, FinetuneConfig)
        return training_resources(config, self.resources.memory_mb, gpu=config.method == "qlora")

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, FinetuneConfig)
        source = source_of(ctx_extras)
        if config.method == "qlora":
            check_qlora_supported()
        check_model_ref(config.model, f"{self.name}.model", source)
        check_dataset_ref(config.data, f"{self.name}.data", source)
        check_dataset_ref(config.validation, f"{self.name}.validation", source)
        check_device(config.device, f"{self.name}.device", source)
        if config.engine == "olive":
            from controller.factory.training.olive_finetune import olive_available

            if not olive_available():
                raise RecipeError(source, f"{self.name}.engine", "olive is not installed: pip install olive-ai")

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, FinetuneConfig)
        config, searched = apply_search(config, "finetune", ctx, self.name)
        base_dir = resolve_ref(ctx, config.model)
        check_model_ref(str(base_dir), f"{self.name}.model", "recipe")
        if config.engine == "olive":
            from controller.factory.training.olive_finetune import run_olive_finetune

            adapter_dir, tokenizer = run_olive_finetune(config, ctx, base_dir)
            metrics: dict[str, Any] = {"engine": "olive"}
            model = None
        else:
            model, tokenizer, metrics = self._train(config, ctx, base_dir)
            adapter_dir = ctx.work_dir / "adapter"
        outputs = {}
        if config.method == "full":
            outputs["model"] = save_model(model, tokenizer, ctx.work_dir / "model")
        else:
            if model is not None:
                model.save_pretrained(str(adapter_dir))  # peft: adapter_config.json + adapter weights
                tokenizer.save_pretrained(str(adapter_dir))
            outputs["model"] = merge_adapter(base_dir, adapter_dir, tokenizer, ctx.work_dir / "model")
            if not config.merge:
                outputs["adapter"] = adapter_dir
                outputs["base"] = copy_tree_linked(base_dir, ctx.work_dir / "base")
            metrics["adapter_bytes"] = sum(p.stat().st_size for p in adapter_dir.rglob("*.safetensors"))
        metrics.update(method=config.method, parameters=count_parameters(outputs["model"]))
        if searched:
            metrics["searched"] = searched
        if config.task and config.test:
            merged, merged_tok = load_model(outputs["model"])
            metrics.update(
                score_model(merged, merged_tok, config.task, load_split(ctx, config.test, config.test_limit))
            )
        log.info("finetune: %s", metrics)
        return StageResult(outputs=outputs, metrics=metrics)

    def _train(self, config: FinetuneConfig, ctx: StageContext, base_dir: Any) -> tuple[Any, Any, dict[str, Any]]:
        start_training(ctx, self.name, config.num_threads)
        train = load_split(ctx, config.data)
        val = load_split(ctx, config.validation)
        if config.method == "qlora":
            check_qlora_supported()
            tokenizer, model = load_tokenizer(base_dir), load_4bit_base(base_dir)
        else:
            model, tokenizer = load_model(base_dir)
        if config.method in ("lora", "qlora"):
            if config.gradient_checkpointing:
                model.enable_input_require_grads()
            model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules)
        report = train_causal_lm(
            model,
            tokenizer,
            train,
            config,
            val,
            stage=self.name,
            progress=ctx.progress,
            check_cancelled=ctx.check_cancelled,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model, tokenizer, {"trainable_parameters": trainable, **report.metrics()}
