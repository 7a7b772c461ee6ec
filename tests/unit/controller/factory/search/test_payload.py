"""A trial's datasets and tokenizer travel with it as bytes (a Ray worker on another machine needs no shared
disk); model weights never do."""

from __future__ import annotations

from pathlib import Path

from controller.factory.search.payload import pack_file, pack_tokenizer
from controller.factory.search.trial import TrialJob, localize


def test_a_trial_reads_its_inputs_from_its_payload(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (src / "val.jsonl").write_text('{"prompt": "c", "response": "d"}\n')
    teacher = src / "teacher"
    teacher.mkdir()
    (teacher / "tokenizer.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"\0" * 1024)
    payload = {
        "data": pack_file(str(src / "train.jsonl")),
        "validation": pack_file(str(src / "val.jsonl")),
        "tokenizer": pack_tokenizer(str(teacher)),
    }
    assert set(payload["tokenizer"]) == {"tokenizer.json"}  # no weights
    job = TrialJob(
        storage_url="sqlite:///x", study_name="s", trial_id=1, number=0, params={},
        student={"data": "/gone/train.jsonl", "teacher": "/gone/teacher", "method": "logit_kd"}, finetune=None,
        build={}, evaluation={"data": "/gone/val.jsonl"}, budgets={}, payload=payload,
    )  # fmt: skip
    local = localize(job, tmp_path / "trial")
    assert local.student is not None and "teacher" not in local.student and local.student["method"] == "sft"
    assert Path(local.student["data"]).read_bytes() == (src / "train.jsonl").read_bytes()
    assert Path(local.evaluation["data"]).read_bytes() == (src / "val.jsonl").read_bytes()
    assert (Path(local.student["tokenizer"]) / "tokenizer.json").is_file() and not local.payload
