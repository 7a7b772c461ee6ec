"""Runtime LoRA: export-adapter builds a base taking LoRA weights as inputs + an .onnx_adapter; with the
adapter active onnxruntime-genai computes what the merged model computes, without it the base model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.factory.builder import build_og_model
from controller.factory.cache import StageCache
from controller.factory.pipeline import PipelineStep
from controller.factory.runner import PipelineRunner


def _adapter_and_merged(hf: Path, out: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(hf))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():  # make the adapter's effect large enough to see in the logits
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(20)
    peft_model.save_pretrained(str(out / "adapter"))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(out / "merged"))
    AutoTokenizer.from_pretrained(str(hf)).save_pretrained(str(out / "merged"))
    return out / "adapter", out / "merged"


def _logits(folder: Path, adapter: Path | None = None) -> np.ndarray:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = tok.encode(
        tok.apply_chat_template(
            json.dumps([{"role": "user", "content": "lights on in lab 4"}]), add_generation_prompt=True
        )
    )
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 4)
    gen = og.Generator(model, params)
    if adapter is not None:
        adapters = og.Adapters(model)
        adapters.load(str(adapter), "a")
        gen.set_active_adapter(adapters, "a")
    gen.append_tokens(ids)
    return np.array(gen.get_logits()).copy()


@pytest.mark.slow
def test_runtime_adapter_matches_merged_model(tmp_path: Path, tiny_hf_model: Path, tiny_og_model: dict) -> None:
    adapter, merged = _adapter_and_merged(tiny_hf_model, tmp_path)
    steps = [
        PipelineStep(
            "export-adapter@cpu-fp32",
            "export-adapter",
            {"profile": "cpu-fp32", "base": str(tiny_hf_model), "adapter": str(adapter), "adapter_name": "sb"},
        ),
        PipelineStep(
            "export-adapter@cpu-int4",
            "export-adapter",
            {
                "profile": "cpu-int4",
                "precision": "int4",
                "base": str(tiny_hf_model),
                "adapter": str(adapter),
                "adapter_name": "sb",
            },
        ),
    ]
    res = PipelineRunner(tmp_path / "job", StageCache(tmp_path / "cache")).run(steps)
    fp32 = res.outcomes["export-adapter@cpu-fp32"]
    assert fp32.outputs["adapter"].name == "sb.onnx_adapter" and fp32.metrics["lora_tensors"] == 8
    merged_og = build_og_model(merged, tmp_path / "merged-og", "fp32")
    with_adapter = _logits(fp32.outputs["model"], fp32.outputs["adapter"])
    np.testing.assert_allclose(with_adapter, _logits(merged_og), atol=1e-4)
    without = _logits(fp32.outputs["model"])
    np.testing.assert_allclose(without, _logits(tiny_og_model["fp32"]), atol=1e-4)
    assert np.abs(with_adapter - without).max() > 1e-2  # the adapter does change the output
    # int4 base: LoRA weights stay float (excluded from quantization) and the adapter loads
    int4 = res.outcomes["export-adapter@cpu-int4"]
    assert int4.metrics["lora_tensors"] == 8
    assert _logits(int4.outputs["model"], int4.outputs["adapter"]).shape == with_adapter.shape
