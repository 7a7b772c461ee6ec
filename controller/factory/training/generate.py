"""Batched generation with a torch model (left padding), for a local teacher and for quick scoring."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from controller.factory.tasks.datasets import Example
from controller.factory.training.data import ensure_chat_template, render_prompt
from controller.factory.training.params import resolve_device

log = logging.getLogger(__name__)


def generate_answers(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 32,
    device: str = "auto",
    seed: int = 0,
    on_batch: Callable[[int, int], None] = lambda _done, _total: None,
) -> list[str]:
    """The model's answer to each example's prompt turns (greedy when ``temperature`` is 0)."""
    import torch

    ensure_chat_template(tokenizer)
    dev = resolve_device(device)
    model.to(dev).eval()
    torch.manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        encoded = [
            tokenizer(render_prompt(tokenizer, ex.messages), add_special_tokens=False)["input_ids"] for ex in chunk
        ]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kwargs["temperature"] = temperature
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                **kwargs,
            )
        for row in out[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        on_batch(len(answers), len(examples))
    return answers
