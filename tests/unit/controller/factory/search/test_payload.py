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


def test_with_a_blob_store_inputs_and_the_base_model_travel_through_it(tmp_path: Path) -> None:
    """The search step ran as a Ray task: its trials fetch the datasets, tokenizer and base model from the
    controller's blob store (a node that sees none of the step's files)."""
    import shutil

    from controller.factory.search import payload as payloads
    from controller.registry.blobstore import FileBlobStore

    src = tmp_path / "src"
    (src / "base").mkdir(parents=True)
    (src / "train.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (src / "val.jsonl").write_text('{"prompt": "c", "response": "d"}\n')
    (src / "base" / "tokenizer.json").write_text("{}")
    (src / "base" / "model.safetensors").write_bytes(b"\1" * 1024)
    data_dir = tmp_path / "controller"
    paths = {k: str(src / f) for k, f in (("data", "train.jsonl"), ("validation", "val.jsonl"), ("model", "base"))}
    payload = payloads.build(paths, {}, str(data_dir))  # {}: the filesystem store of data_dir
    assert not any(isinstance(v, bytes) for v in payload.values())  # no file content travels in the payload
    stored = FileBlobStore(data_dir / "artifacts")
    assert sum(1 for _ in stored.iterate()) == 4  # both datasets and the model's two files
    shutil.rmtree(src)

    job = TrialJob(
        storage_url="sqlite:///x", study_name="s", trial_id=1, number=0, params={}, student=None,
        finetune={"data": "/gone/train.jsonl"}, build={}, evaluation={"data": "/gone/val.jsonl"}, budgets={},
        base_model="/gone/base", payload=payload,
    )  # fmt: skip
    local = localize(job, tmp_path / "trial")
    assert local.finetune is not None and Path(local.finetune["data"]).read_text().startswith('{"prompt": "a"')
    assert Path(local.evaluation["data"]).read_text().startswith('{"prompt": "c"')
    assert (Path(local.base_model) / "model.safetensors").read_bytes() == b"\1" * 1024
