"""Figures that say what they measure: teacher accuracy vs references (distill-data) and hold-out rows
scored against the file's own answers beside the teacher agreement (evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

from controller.factory.evaluation import EvalResult
from controller.factory.stage import StageContext, get_stage
from controller.factory.stages.evaluate import holdout_figures
from controller.factory.tasks import read_jsonl, write_jsonl
from controller.factory.tasks.datasets import Example
from tests.unit.controller.factory_train.test_distill_data import FakeOpenAI


def test_distill_data_scores_the_teacher_and_warns_when_it_is_weak(tmp_path: Path) -> None:
    rows = [Example([{"role": "user", "content": f"what is {i} plus 1?"}], str(i + 1)) for i in range(10)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    answers = {ex.prompt: (ex.response if i < 4 else "no idea") for i, ex in enumerate(rows)}  # 4 of 10 right
    server = FakeOpenAI(answers)
    seen: list = []
    try:
        stage = get_stage("distill-data")
        config = stage.parse_config({"prompts": str(prompts), "endpoint": {"base_url": server.base_url, "model": "m"}})
        ctx = StageContext(work_dir=tmp_path / "w", inputs={}, cache_dir=tmp_path / "c", progress=seen.append)
        ctx.work_dir.mkdir()
        res = stage.run(config, ctx)
    finally:
        server.close()
    assert res.metrics["teacher_reference_accuracy"] == 0.4 and res.metrics["teacher_reference_n"] == 10
    (warning,) = res.metrics["warnings"]
    assert "matches only 40.0% of 10 reference answers in prompts.jsonl" in warning and "60%" in warning
    assert any(p.message.startswith("warning: the teacher matches only 40.0%") for p in seen)
    out = read_jsonl(res.outputs["dataset"])
    assert out[5].response == "no idea" and out[5].extra["reference"] == "6"  # references kept for the hold-out


def _result(tmp_path: Path, predictions: list[str], teacher: list[str]) -> EvalResult:
    path = tmp_path / "predictions.jsonl"
    rows = [
        {"prompt": "p", "prediction": p, "reference": t, "exact": p == t}
        for p, t in zip(predictions, teacher, strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    agreement = sum(r["exact"] for r in rows) / len(rows)
    return EvalResult({"accuracy": agreement, "n": float(len(rows))}, [], path)


def _holdout(tmp_path: Path, teacher: list[str], references: list[str | None]) -> Path:
    rows = []
    for i, (t, ref) in enumerate(zip(teacher, references, strict=True)):
        extra = {"reference": ref} if ref is not None else {}
        rows.append(Example([{"role": "user", "content": f"q{i}"}], t, extra))
    return write_jsonl(tmp_path / "holdout.jsonl", rows)


def test_holdout_row_is_accuracy_vs_references_when_every_row_has_an_answer(tmp_path: Path) -> None:
    teacher, refs, preds = ["1", "2", "3", "x"], ["1", "2", "3", "4"], ["1", "2", "9", "4"]
    figures = holdout_figures(_result(tmp_path, preds, teacher), _holdout(tmp_path, teacher, refs), "", True, "int4")
    assert figures["accuracy"] == 0.75 and figures["reference_accuracy"] == 0.75  # 1, 2, 4 right
    assert figures["teacher_agreement"] == 0.5  # agrees with the teacher on 1, 2
    assert figures["label"] == "int4: accuracy vs references (teacher agreement 50.0%)"


def test_holdout_without_answers_is_labelled_teacher_agreement(tmp_path: Path) -> None:
    teacher, preds = ["1", "2"], ["1", "0"]
    unanswered = _holdout(tmp_path, teacher, [None, None])
    figures = holdout_figures(_result(tmp_path, preds, teacher), unanswered, "", True, "a")
    assert figures["label"] == "a: teacher agreement" and "accuracy" not in figures
    part = holdout_figures(_result(tmp_path, preds, teacher), _holdout(tmp_path, teacher, ["1", None]), "", True, "a")
    assert part["measures"] == "teacher_agreement" and part["reference_accuracy"] == 1.0 and part["reference_n"] == 1
    own = holdout_figures(_result(tmp_path, preds, teacher), _holdout(tmp_path, teacher, [None, None]), "", False, "a")
    assert own["label"] == "a: accuracy vs references" and own["reference_accuracy"] == 0.5
