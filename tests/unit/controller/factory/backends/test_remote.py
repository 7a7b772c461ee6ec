"""A stage task as it runs on a Ray node that does not share the controller's disk (no Ray needed: the task
body is called directly): inputs come from the blob store, outputs go back through it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from controller.factory.backends.remote import StageTask, execute
from controller.factory.backends.transfer import materialize, pack
from controller.registry.blobstore import FileBlobStore


def _jsonl(path: Path, prompts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "response": "r"}) + "\n" for p in prompts))
    return path


def test_task_on_a_node_without_the_controllers_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    (tmp_path / "node-tmp").mkdir()
    data_dir = tmp_path / "controller"
    blobs = FileBlobStore(data_dir / "artifacts")
    upstream = _jsonl(data_dir / "cache" / "stages" / "k1" / "train.jsonl", ["a", "b"])
    own = _jsonl(tmp_path / "user" / "extra.jsonl", ["b", "c"])
    packs = {str(upstream): pack(blobs, upstream), str(own): pack(blobs, own)}
    shutil.rmtree(data_dir / "cache")  # the node sees neither file
    shutil.rmtree(tmp_path / "user")
    task = StageTask(
        job_id="j1",
        step_id="merge-data",
        stage="merge-data",
        config={"sources": ["task-data.train", str(own)]},
        work_dir=str(tmp_path / "missing" / "jobs" / "j1" / "02-merge-data"),
        inputs={"task-data.train": str(upstream)},
        upstream={},
        cache_dir=str(tmp_path / "missing" / "cache"),
        data_dir=str(data_dir),
        packs=packs,
        blob_config={},
    )
    out = execute(task, None)
    assert out["status"] == "ok", out
    assert Path(out["work_dir"]).is_relative_to(tmp_path / "node-tmp")
    assert out["outputs"] == {"train": "rel:train.jsonl"}
    assert out["metrics"]  # merge-data reports its counts
    assert not (tmp_path / "node-tmp" / "slmops-ray" / "j1").exists()  # the task removed its scratch

    back = materialize(blobs, out["packed"], tmp_path / "controller-side")  # what the job worker does
    prompts = [json.loads(line)["prompt"] for line in (back / "train.jsonl").read_text().splitlines()]
    assert prompts == ["a", "b", "c"]  # both inputs were read from the store, deduplicated


def test_stage_errors_come_back_as_plain_data(tmp_path: Path) -> None:
    task = StageTask(
        job_id="j2",
        step_id="merge-data",
        stage="merge-data",
        config={"sources": [str(tmp_path / "nope.jsonl")]},
        work_dir=str(tmp_path / "jobs" / "01-merge-data"),
        inputs={},
        upstream={},
        cache_dir=str(tmp_path / "cache"),
        data_dir=str(tmp_path),
    )
    (tmp_path / "jobs").mkdir()
    out = execute(task, None)
    assert out["status"] in ("error", "crash") and "nope.jsonl" in out["message"]
