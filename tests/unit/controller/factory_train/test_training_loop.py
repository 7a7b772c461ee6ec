"""The torch training loop: SFT lowers the answer loss; logit KD runs and lowers it; cancellation works."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.factory.modeling import load_causal_lm
from controller.factory.stage import Progress
from controller.factory.tasks import read_jsonl
from controller.factory.training import KDParams, TrainParams, train_causal_lm
from controller.factory.training.data import IGNORE_INDEX, encode_examples
from shared.errors import Cancelled


def test_encoding_masks_prompt_and_ends_with_eos(tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    _, tok = load_causal_lm(tiny_hf_model)
    ex = read_jsonl(task_data["train"], limit=1)[0]
    enc = encode_examples(tok, [ex], max_len=256)[0]
    answer = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(answer, skip_special_tokens=True) == ex.response
    assert answer[-1] == tok.eos_token_id
    prompt_len = enc.labels.index(next(lab for lab in enc.labels if lab != IGNORE_INDEX))
    assert tok.convert_ids_to_tokens(enc.input_ids[prompt_len - 1]) == "<|assistant|>"


def test_sft_lowers_validation_loss(tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    model, tok = load_causal_lm(tiny_hf_model)
    train, val = read_jsonl(task_data["train"], limit=400), read_jsonl(task_data["validation"], limit=24)
    seen: list[Progress] = []
    params = TrainParams(learning_rate=3e-3, max_steps=20, batch_size=8, grad_accum=2, log_every=10)
    report = train_causal_lm(model, tok, train, params, val, progress=seen.append)
    assert report.initial_val_loss is not None and report.val_loss is not None
    assert report.val_loss < 0.6 * report.initial_val_loss
    assert report.steps == 20 and seen[-1].step == 20 and seen[-1].total_steps == 20
    assert any(p.loss is not None for p in seen[1:])


def test_logit_kd_runs_and_lowers_loss(tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    teacher, tok = load_causal_lm(tiny_hf_model)
    train, val = read_jsonl(task_data["train"], limit=200), read_jsonl(task_data["validation"], limit=32)
    train_causal_lm(teacher, tok, train, TrainParams(learning_rate=3e-3, max_steps=10, batch_size=16))
    student, _ = load_causal_lm(tiny_hf_model)
    params = TrainParams(learning_rate=3e-3, max_steps=10, batch_size=8, seed=1)
    report = train_causal_lm(student, tok, train, params, val, teacher=teacher, kd=KDParams(2.0, 0.7))
    assert report.val_loss is not None and report.initial_val_loss is not None
    assert report.val_loss < report.initial_val_loss
    assert all(loss == loss for _, loss in report.history)  # no NaN


def test_cancellation_stops_training(tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    model, tok = load_causal_lm(tiny_hf_model)
    train = read_jsonl(task_data["train"], limit=50)
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        train_causal_lm(model, tok, train, TrainParams(max_steps=100, batch_size=4), check_cancelled=check)
    assert calls["n"] == 4


def test_gradient_checkpointing_trains(tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    model, tok = load_causal_lm(tiny_hf_model)
    train = read_jsonl(task_data["train"], limit=32)
    params = TrainParams(learning_rate=1e-3, max_steps=3, batch_size=8, gradient_checkpointing=True)
    report = train_causal_lm(model, tok, train, params)
    assert report.steps == 3 and model.config.use_cache
