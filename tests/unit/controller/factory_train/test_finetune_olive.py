"""finetune with engine: olive (``olive finetune`` in a child process): slow, needs olive-ai installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.factory.modeling import load_causal_lm
from controller.factory.stage import get_stage
from controller.factory.training.olive_finetune import olive_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not olive_available(), reason="olive-ai is not installed"),
]


def test_olive_lora_unmerged(tiny_hf_model: Path, task_data: dict[str, Path], make_ctx) -> None:
    stage = get_stage("finetune")
    config = stage.parse_config(
        {
            "model": str(tiny_hf_model),
            "data": str(task_data["shifted_train"]),
            "engine": "olive",
            "method": "lora",
            "merge": False,
            "max_steps": 3,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "lora_r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj"],
        }
    )
    stage.validate(config, {})
    res = stage.run(config, make_ctx())
    assert (res.outputs["adapter"] / "adapter_config.json").is_file()
    model, tok = load_causal_lm(res.outputs["model"])
    assert tok.chat_template and model.config.vocab_size == len(tok)
    assert res.metrics["engine"] == "olive"
