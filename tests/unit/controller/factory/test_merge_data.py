"""merge-data (retrain: training prompts + prompts sampled in production) through the real runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.factory.cache import StageCache
from controller.factory.pipeline import PipelineStep
from controller.factory.runner import PipelineRunner
from shared.errors import StageError


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_merge_data_concatenates_and_dedupes(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", [{"prompt": "lights on", "response": "{}"}, {"prompt": "lock lab 2"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt": "lights on"}, {"prompt": "open blinds"}])
    step = PipelineStep("merge-data", "merge-data", {"sources": [a, b]})
    res = PipelineRunner(tmp_path / "job", StageCache(tmp_path / "cache")).run([step])
    out = res.outcomes["merge-data"]
    rows = [json.loads(line) for line in out.outputs["train"].read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["lights on", "lock lab 2", "open blinds"]
    assert out.metrics["records"] == 3 and len(out.metrics["data_hash"]) == 64
    # a changed source file changes the cache key (its content is part of it)
    _jsonl(tmp_path / "b.jsonl", [{"prompt": "close blinds"}])
    again = PipelineRunner(tmp_path / "job2", StageCache(tmp_path / "cache")).run([step])
    assert again.ran == ["merge-data"]
    assert PipelineRunner(tmp_path / "job3", StageCache(tmp_path / "cache")).run([step]).cached == ["merge-data"]


def test_merge_data_bad_record_fails_the_step(tmp_path: Path) -> None:
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "no prompt"}])
    with pytest.raises(StageError, match=r"merge-data.*bad.jsonl:1: missing field 'prompt'"):
        PipelineRunner(tmp_path / "job", StageCache(tmp_path / "cache")).run(
            [PipelineStep("merge-data", "merge-data", {"sources": [bad]})]
        )


def test_a_step_output_is_found_by_its_step_id_beside_a_same_stage_step(tmp_path: Path) -> None:
    """Two task-data steps feed one merge: "task-data.train" must name the base split, not the shifted one."""
    sizes = {"task": "smart-building", "train_size": 6, "validation_size": 2, "test_size": 2}
    steps = [
        PipelineStep("task-data", "task-data", sizes),
        PipelineStep("task-data@shifted", "task-data", {**sizes, "variant": "shifted"}),
        PipelineStep(
            "merge",
            "merge-data",
            {"sources": ["task-data.train", "task-data@shifted.train"], "require_response": True},
            ["task-data", "task-data@shifted"],
        ),
    ]
    res = PipelineRunner(tmp_path / "job", StageCache(tmp_path / "cache")).run(steps)
    base = res.outcomes["task-data"].outputs["train"].read_text().splitlines()
    shifted = res.outcomes["task-data@shifted"].outputs["train"].read_text().splitlines()
    merged = res.outcomes["merge"].outputs["train"].read_text().splitlines()
    assert set(base).isdisjoint(shifted)
    assert merged == base + shifted
    assert res.outcomes["merge"].metrics["per_source"] == {"task-data.train": 6, "task-data@shifted.train": 6}
