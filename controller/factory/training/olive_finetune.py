"""``olive finetune`` (LoRA/QLoRA) as the finetune stage's alternative engine.

The training data is pre-rendered with the model's chat template into a ``text`` field, so Olive trains on
exactly what the runtime will see. Olive exits 0 even when a pass fails, so the adapter's presence is
checked and a missing one is an error carrying the tail of Olive's output.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from controller.factory.stage import Progress, StageContext
from controller.factory.subproc import run_tool
from controller.factory.tasks import write_jsonl
from controller.factory.training.data import answer_suffix, ensure_chat_template, render_prompt
from controller.factory.training.setup import load_split, load_tokenizer
from shared.errors import StageError

log = logging.getLogger(__name__)


def olive_command() -> list[str]:
    exe = Path(sys.executable).parent / "olive"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("olive")
    return [found] if found else [sys.executable, "-m", "olive"]


def olive_available() -> bool:
    return importlib.util.find_spec("olive") is not None


def _render(ctx: StageContext, ref: str, tokenizer: Any, out: Path) -> Path:
    records = []
    for ex in load_split(ctx, ref):
        prompt = render_prompt(tokenizer, ex.messages)
        records.append({"text": prompt + answer_suffix(tokenizer, ex.messages, ex.response or "", prompt)})
    return write_jsonl(out, records)


def run_olive_finetune(config: Any, ctx: StageContext, base_dir: Path) -> tuple[Path, Any]:
    """Run ``olive finetune`` on ``base_dir``; returns (peft adapter folder, tokenizer)."""
    tokenizer = load_tokenizer(base_dir)
    ensure_chat_template(tokenizer)
    data = _render(ctx, config.data, tokenizer, ctx.work_dir / "olive-data" / "train.jsonl")
    out = ctx.work_dir / "olive"
    steps = config.max_steps or 100
    cmd = [*olive_command(), "finetune", "-m", str(base_dir), "-o", str(out), "--method", config.method]
    cmd += ["-d", "json", "--data_files", str(data), "--train_split", "train", "--text_field", "text"]
    cmd += ["--max_seq_len", str(config.max_seq_len), "--add_special_tokens", "false"]
    cmd += ["--lora_r", str(config.lora_r), "--lora_alpha", str(config.lora_alpha)]
    cmd += ["--torch_dtype", "float32" if config.method == "lora" else "bfloat16"]
    if isinstance(config.target_modules, list):
        cmd += ["--target_modules", ",".join(config.target_modules)]
    # Unknown flags pass through to Hugging Face TrainingArguments.
    cmd += ["--max_steps", str(steps), "--learning_rate", str(config.learning_rate)]
    cmd += ["--per_device_train_batch_size", str(config.batch_size)]
    cmd += ["--gradient_accumulation_steps", str(config.grad_accum), "--seed", str(config.seed)]
    cmd += ["--log_level", "1", "--disable_telemetry"]
    ctx.progress(Progress("finetune", 0, steps, message="olive finetune running"))
    log_path = ctx.work_dir / "olive.log"
    run = run_tool(cmd, log_path, is_cancelled=ctx.is_cancelled)
    adapter = out / "adapter"
    if run.returncode != 0 or not (adapter / "adapter_config.json").is_file():
        raise StageError(
            "finetune",
            f"olive finetune (exit code {run.returncode}) produced no adapter in {adapter}; "
            f"its output ended with:\n{run.tail()}",
        )
    ctx.progress(Progress("finetune", steps, steps, message=f"olive finetune done in {run.seconds:.0f}s"))
    log.info("olive finetune: adapter in %s (%.0f s)", adapter, run.seconds)
    return adapter, tokenizer
