"""Stage finetune: full and LoRA (merged / kept as an adapter); QLoRA refused at validation without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from controller.factory.modeling import load_causal_lm
from controller.factory.stage import get_stage
from shared.errors import ConfigError, UnsupportedOnThisMachine

BASE = {"learning_rate": 5e-3, "max_steps": 4, "batch_size": 8, "lora_r": 4, "lora_alpha": 8}


def _weights_differ(a: Path, b: Path) -> bool:
    ma, _ = load_causal_lm(a)
    mb, _ = load_causal_lm(b)
    return any(not torch.equal(pa, pb) for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True))


def test_lora_merged(tiny_hf_model: Path, task_data: dict[str, Path], make_ctx) -> None:
    stage = get_stage("finetune")
    config = stage.parse_config({**BASE, "model": "model", "data": "train", "method": "lora", "merge": True})
    stage.validate(config, {})
    res = stage.run(config, make_ctx({"model": tiny_hf_model, "train": task_data["shifted_train"]}))
    assert set(res.outputs) == {"model"}
    assert _weights_differ(res.outputs["model"], tiny_hf_model)
    assert 0 < res.metrics["trainable_parameters"] < res.metrics["parameters"] / 4
    assert not (res.outputs["model"] / "adapter_config.json").exists()


def test_lora_unmerged_keeps_adapter_and_base(tiny_hf_model: Path, task_data: dict[str, Path], make_ctx) -> None:
    from peft import PeftModel

    stage = get_stage("finetune")
    config = stage.parse_config(
        {
            **BASE,
            "model": str(tiny_hf_model),
            "data": str(task_data["shifted_train"]),
            "merge": False,
            "target_modules": ["q_proj", "v_proj", "down_proj"],
        }
    )
    res = stage.run(config, make_ctx())
    assert set(res.outputs) == {"model", "adapter", "base"}
    assert (res.outputs["adapter"] / "adapter_config.json").is_file()
    assert res.metrics["adapter_bytes"] > 0
    base, _ = load_causal_lm(res.outputs["base"])
    with_adapter = PeftModel.from_pretrained(base, str(res.outputs["adapter"]))
    merged, tok = load_causal_lm(res.outputs["model"])
    ids = tok("<s><|user|>lights off in lab 3</s><|assistant|>", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        a = with_adapter(**ids).logits
        b = merged(**ids).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_full_finetune(tiny_hf_model: Path, task_data: dict[str, Path], make_ctx) -> None:
    stage = get_stage("finetune")
    config = stage.parse_config(
        {**BASE, "model": str(tiny_hf_model), "data": str(task_data["train"]), "method": "full"}
    )
    res = stage.run(config, make_ctx())
    assert res.metrics["trainable_parameters"] == res.metrics["parameters"]
    assert _weights_differ(res.outputs["model"], tiny_hf_model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the refusal on machines without CUDA")
def test_qlora_refused_at_validation_without_cuda(tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    stage = get_stage("finetune")
    config = stage.parse_config({"model": str(tiny_hf_model), "data": str(task_data["train"]), "method": "qlora"})
    with pytest.raises(UnsupportedOnThisMachine, match=r"qlora.*CUDA"):
        stage.validate(config, {})


def test_finetune_config_errors() -> None:
    stage = get_stage("finetune")
    with pytest.raises(ConfigError, match="only LoRA/QLoRA"):
        stage.parse_config({"method": "full", "merge": False})
    with pytest.raises(ConfigError, match="method"):
        stage.parse_config({"method": "dora"})
