"""Stages train-teacher (cached across jobs), train-student (SFT / logit KD) and task-data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.factory.modeling import count_parameters, load_causal_lm
from controller.factory.stage import get_stage, stage_names
from controller.factory.tasks import read_jsonl
from shared.errors import Cancelled, ConfigError, RecipeError

SMALL = {"arch": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}


def test_stages_are_registered() -> None:
    assert {"task-data", "distill-data", "train-teacher", "train-student", "finetune"} <= set(stage_names())


def test_task_data_stage_outputs_splits(make_ctx) -> None:
    stage = get_stage("task-data")
    config = stage.parse_config({"train_size": 50, "validation_size": 10, "test_size": 10, "variant": "shifted"})
    stage.validate(config, {})
    res = stage.run(config, make_ctx())
    assert set(res.outputs) == {"train", "validation", "test"}
    assert len(read_jsonl(res.outputs["test"])) == 10 and len(res.metrics["data_hash"]) == 64
    with pytest.raises(RecipeError, match="known: smart-building"):
        stage.validate(stage.parse_config({"task": "nope"}), {})


def test_train_teacher_is_trained_once_and_reused(task_data: dict[str, Path], make_ctx) -> None:
    stage = get_stage("train-teacher")
    raw = {
        "spec": SMALL,
        "data": "train",
        "validation": "validation",
        "learning_rate": 3e-3,
        "max_steps": 4,
        "batch_size": 8,
        "vocab_size": 600,
    }
    config = stage.parse_config(raw)
    stage.validate(config, {})
    inputs = {"train": task_data["train"], "validation": task_data["validation"]}
    first = stage.run(config, make_ctx(inputs, "a"))
    assert first.metrics["reused_cached_teacher"] is False and first.metrics["steps"] == 4
    _, tok = load_causal_lm(first.outputs["model"])
    assert len(tok) <= 600 and first.metrics["parameters"] == count_parameters(first.outputs["model"])
    # Another job with the same data (at another path) and config reuses the cached teacher.
    copy = first.outputs["model"].parent.parent / "train-copy.jsonl"
    copy.write_bytes(task_data["train"].read_bytes())
    second = stage.run(config, make_ctx({**inputs, "train": copy}, "b"))
    assert second.metrics["reused_cached_teacher"] is True
    assert second.metrics["teacher_cache_key"] == first.metrics["teacher_cache_key"]
    a = (first.outputs["model"] / "model.safetensors").read_bytes()
    assert a == (second.outputs["model"] / "model.safetensors").read_bytes()
    # A config change trains a new one.
    third = stage.run(stage.parse_config({**raw, "max_steps": 5}), make_ctx(inputs, "c"))
    assert third.metrics["reused_cached_teacher"] is False


def test_train_student_sft_from_spec_with_teacher_tokenizer(
    tiny_hf_model: Path, task_data: dict[str, Path], make_ctx
) -> None:
    stage = get_stage("train-student")
    config = stage.parse_config(
        {
            "init": SMALL,
            "teacher": "teacher",
            "data": "dataset",
            "validation": "validation",
            "learning_rate": 3e-3,
            "max_steps": 12,
            "batch_size": 16,
            "task": "smart-building",
            "test": "test",
            "test_limit": 8,
        }
    )
    stage.validate(config, {})
    ctx = make_ctx(
        {
            "teacher": tiny_hf_model,
            "dataset": task_data["train"],
            "validation": task_data["validation"],
            "test": task_data["test"],
        }
    )
    res = stage.run(config, ctx)
    _, tok = load_causal_lm(res.outputs["model"])
    _, teacher_tok = load_causal_lm(tiny_hf_model)
    assert tok.get_vocab() == teacher_tok.get_vocab()
    m = res.metrics
    assert m["val_loss"] < m["initial_val_loss"] and m["parameters"] < m["teacher_parameters"]
    assert 0.0 <= m["test_exact_match"] <= 1.0 and m["test_n"] == 8
    assert not (ctx.work_dir / "init").exists()


def test_train_student_logit_kd(tiny_hf_model: Path, task_data: dict[str, Path], make_ctx) -> None:
    stage = get_stage("train-student")
    config = stage.parse_config(
        {
            "init": SMALL,
            "teacher": str(tiny_hf_model),
            "method": "logit_kd",
            "temperature": 2.0,
            "alpha": 0.5,
            "data": str(task_data["train"]),
            "validation": str(task_data["validation"]),
            "learning_rate": 3e-3,
            "max_steps": 6,
            "batch_size": 8,
        }
    )
    stage.validate(config, {})
    res = stage.run(config, make_ctx())
    assert res.metrics["method"] == "logit_kd" and res.metrics["val_loss"] < res.metrics["initial_val_loss"]


def test_train_student_cancelled(tiny_hf_model: Path, task_data: dict[str, Path], make_ctx) -> None:
    stage = get_stage("train-student")
    config = stage.parse_config({"model": str(tiny_hf_model), "data": str(task_data["train"]), "max_steps": 5})
    with pytest.raises(Cancelled):
        stage.run(config, make_ctx(cancelled=True))


def test_train_student_validation_errors(tmp_path: Path, tiny_hf_model: Path) -> None:
    stage = get_stage("train-student")
    with pytest.raises(ConfigError, match="known: llama, qwen2, phi3"):
        stage.parse_config({"init": {**SMALL, "arch": "mamba9"}})
    with pytest.raises(ConfigError, match="logit_kd' needs 'teacher'"):
        stage.parse_config({"init": SMALL, "method": "logit_kd"})
    with pytest.raises(ConfigError, match="exactly one of 'init'"):
        stage.parse_config({})
    missing = tmp_path / "gone"
    with pytest.raises(RecipeError, match=f"model folder '{missing}' does not exist"):
        stage.validate(stage.parse_config({"model": str(missing)}), {})
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "c"}) + "\n")
    with pytest.raises(Exception, match=rf"{data}:2: missing field 'response'"):
        stage.validate(stage.parse_config({"model": str(tiny_hf_model), "data": str(data)}), {})
    with pytest.raises(RecipeError, match="does not exist"):
        stage.validate(stage.parse_config({"model": str(tiny_hf_model), "data": str(tmp_path / "x.jsonl")}), {})
