"""Parameter-efficient fine-tuning with peft: LoRA over a full-precision base, QLoRA over a 4-bit base."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from shared.errors import UnsupportedOnThisMachine

log = logging.getLogger(__name__)


def check_qlora_supported() -> None:
    """QLoRA needs bitsandbytes' 4-bit kernels, which need a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedOnThisMachine(
            "method 'qlora' needs a CUDA GPU (bitsandbytes 4-bit kernels) and this machine has none; "
            "use method 'lora' here, or run the job on a GPU controller"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UnsupportedOnThisMachine(
            "method 'qlora' needs the 'bitsandbytes' package, which is not installed: pip install bitsandbytes"
        )


def load_4bit_base(folder: Path) -> Any:
    """The base model quantized to 4-bit NF4 on the GPU, prepared for k-bit training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=quant, device_map={"": 0})
    return prepare_model_for_kbit_training(model)


def apply_lora(model: Any, r: int, alpha: int, dropout: float, target_modules: list[str] | str | None) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%d: %d trainable of %d parameters", r, trainable, total)
    return peft_model


def merge_adapter(base_dir: Path, adapter_dir: Path, tokenizer: Any, out_dir: Path) -> Path:
    """Load the base at full precision, apply the adapter, merge and save a plain HF folder."""
    from peft import PeftModel

    from controller.factory.modeling import load_causal_lm

    base, _ = load_causal_lm(base_dir)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
