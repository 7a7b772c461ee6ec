"""Turn chat examples into token ids with the model's own chat template; loss only on the answer tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.factory.tasks.datasets import Example
from controller.factory.tokenizer import DEFAULT_CHAT_TEMPLATE

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the default one (base models), with a warning."""
    if not getattr(tokenizer, "chat_template", None):
        log.warning("tokenizer has no chat template; using slmops' default template")
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text a runtime sends for these turns (template with the generation prompt)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_suffix(tokenizer: Any, messages: list[dict[str, str]], response: str, prompt_text: str) -> str:
    """The text the template puts after the prompt for this answer (answer + the turn's end marker)."""
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    if full.startswith(prompt_text):
        return full[len(prompt_text) :]
    # Templates that render the last assistant turn differently: answer plus eos.
    return response + (tokenizer.eos_token or "")


def encode_example(tokenizer: Any, example: Example, max_len: int) -> Encoded:
    if example.response is None:
        raise ValueError("cannot train on an example without a response")
    prompt_text = render_prompt(tokenizer, example.messages)
    suffix = answer_suffix(tokenizer, example.messages, example.response, prompt_text)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if len(answer_ids) >= max_len:
        answer_ids = answer_ids[: max_len // 2]
    room = max_len - len(answer_ids)
    if len(prompt_ids) > room:
        prompt_ids = prompt_ids[-room:]  # keep the end of the prompt, next to the answer
    ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    return Encoded(ids, labels)


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_len: int) -> list[Encoded]:
    ensure_chat_template(tokenizer)
    return [encode_example(tokenizer, ex, max_len) for ex in examples]


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors ``input_ids``, ``attention_mask``, ``labels`` for training."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
