"""What the training stages share: loading their datasets, creating or loading the model, scoring, saving."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from controller.factory.modeling import ModelSpec, init_model, load_causal_lm
from controller.factory.stage import StageContext
from controller.factory.tasks import get_task, read_jsonl
from controller.factory.tasks.datasets import Example
from controller.factory.tokenizer import build_tokenizer
from controller.factory.training.generate import generate_answers
from controller.factory.training.refs import resolve_ref

log = logging.getLogger(__name__)


def load_split(ctx: StageContext, ref: str | None, limit: int | None = None) -> list[Example]:
    """A dataset split ([] when ``ref`` is empty)."""
    if not ref:
        return []
    return read_jsonl(resolve_ref(ctx, ref), require_response=True, limit=limit)


def start_training(ctx: StageContext, stage: str, requested: int) -> None:
    """Choose the torch threads for a training stage (``requested``: the recipe's ``num_threads``, 0 = choose)
    and show the choice as the step's progress line."""
    from controller.factory.stage import Progress
    from controller.factory.training.threads import configure_threads

    choice = configure_threads(requested, ctx.extras)
    ctx.progress(Progress(stage, 0, 0, message=choice.describe()))


def tokenizer_texts(examples: list[Example]) -> list[str]:
    texts: list[str] = []
    for ex in examples:
        texts.extend(m["content"] for m in ex.messages)
        if ex.response:
            texts.append(ex.response)
    return texts


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def create_model(
    spec: ModelSpec,
    out_dir: Path,
    train: list[Example],
    seed: int,
    tokenizer_dir: Path | None = None,
    vocab_size: int = 1000,
    single_digit_tokens: bool = True,
) -> Path:
    """Initialise ``spec`` in ``out_dir``; tokenizer from ``tokenizer_dir``, else a new one learned from ``train``."""
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    else:
        tok_dir = out_dir.parent / f"{out_dir.name}-tokenizer"
        tokenizer = build_tokenizer(
            tokenizer_texts(train), tok_dir, vocab_size=vocab_size, single_digit_tokens=single_digit_tokens
        )
        shutil.rmtree(tok_dir, ignore_errors=True)
    return init_model(spec, tokenizer, out_dir, seed=seed)


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def score_model(
    model: Any,
    tokenizer: Any,
    task: str,
    test: list[Example],
    max_new_tokens: int = 96,
    device: str = "auto",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Exact-match / JSON-valid fractions of the model's greedy answers on ``test`` (torch, quick check)."""
    if not task or not test:
        return {}
    answers = generate_answers(
        model, tokenizer, test, max_new_tokens=max_new_tokens, device=device, batch_size=batch_size
    )
    scores = get_task(task).score_many(answers, [ex.response or "" for ex in test])
    return {"test_exact_match": scores["exact_match"], "test_valid_json": scores["valid_json"], "test_n": scores["n"]}


def load_model(folder: Path) -> tuple[Any, Any]:
    return load_causal_lm(folder)
