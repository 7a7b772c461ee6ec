"""Recipes: schema errors name file and field; validation catches what can fail before a job is queued;
expansion wires the pipeline; overrides (retrain / re-optimize) change only what they name."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from controller.factory.jobs import JobManager
from controller.factory.pipeline import PipelineStep, validate_pipeline
from controller.factory.plan import expand_recipe
from controller.factory.recipe import apply_overrides, dump_recipe, load_recipe, load_recipe_file
from controller.store.db import Store
from shared.errors import RecipeError, SlmopsError, UnsupportedOnThisMachine
from shared.profiles import DeviceProfile, bundled_profiles_dir, load_profiles

ROOT = Path(__file__).resolve().parents[4]
PROFILES = load_profiles(bundled_profiles_dir())
BASE = {
    "name": "t",
    "data": {"task": "smart-building", "train_size": 20, "validation_size": 5, "test_size": 5},
    "teacher": {
        "train": {"spec": {"arch": "llama", "hidden_size": 64, "num_layers": 1, "num_heads": 2}, "max_steps": 2}
    },
    "student": {"init": {"arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2}, "max_steps": 2},
    "profiles": ["cpu-int4", "cpu-fp32"],
}


def _check(raw: dict, source: str = "/r/recipe.yaml", profiles: dict[str, DeviceProfile] = PROFILES) -> list:
    recipe = load_recipe(yaml.safe_dump(raw), source)
    steps = expand_recipe(recipe, profiles, source=source)
    validate_pipeline(steps, {"profiles": profiles}, source)
    return steps


def _with(**changes: object) -> dict:
    raw = json.loads(json.dumps(BASE))
    raw.update(changes)
    return raw


def test_demo_recipe_expands_and_validates() -> None:
    recipe = load_recipe_file(ROOT / "examples" / "recipes" / "demo.yaml")
    steps = expand_recipe(recipe, PROFILES, job_id="j1")
    validate_pipeline(steps, {"profiles": PROFILES}, "demo.yaml")
    ids = [s.id for s in steps]
    assert ids[:6] == ["task-data", "task-data@shifted", "merge-data@teacher", "train-teacher", "distill-data",
                       "train-student"]  # fmt: skip
    assert {"quantize@cpu-int4", "quantize@cpu-fp32", "evaluate@teacher", "evaluate@student-fp32"} <= set(ids)
    assert ids[-1] == "publish"
    by_id = {s.id: s for s in steps}
    q = by_id["quantize@cpu-int4"].config
    assert (q["precision"], q["int4_block_size"], q["int4_accuracy_level"]) == ("int4", 32, 4)
    assert q["extra_options"] == {"op_types_to_quantize": ["MatMul", "Gather"]}
    assert by_id["train-student"].config["teacher"] == "train-teacher.model"  # shares the teacher's tokenizer
    publish = by_id["publish"].config
    assert publish["lineage"]["job_id"] == "j1" and len(publish["lineage"]["recipe_hash"]) == 64
    assert publish["lineage_hashes"] == {"data_hash": "distill-data.dataset"}
    assert "distill-data" in by_id["publish"].needs


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"student": {"init": {"arch": "gpt9"}}}, "train-student.init", "unknown arch 'gpt9'"),
        ({"student": {"model": "/no/such/model"}}, "train-student.model", "does not exist"),
        ({"profiles": ["cpu-int4", "npu-int4"]}, "profiles[1]", "unknown device profile 'npu-int4'"),
        ({"profiles": ["cpu-int4", "cpu-int4"]}, "profiles[1]", "listed twice"),
        ({"profiles": [{"name": "cpu-int4", "precision": "fp16"}]}, "profiles.cpu-int4.precision", "cannot build fp16"),
        ({"profiles": []}, "profiles", "at least 1"),
        ({"name": "Bad Name"}, "name", "not valid"),
        ({"data": {"task": "nope"}}, "task-data.task", "unknown task 'nope'"),
        ({"data": {"train": "x.jsonl"}}, "data", "both 'train' and 'test'"),
        ({"teacher": {"folder": "/t", "endpoint": {"base_url": "http://x"}}}, "teacher", "exactly one"),
        ({"student": {"init": {"arch": "llama"}, "learning_rat": 1}}, "train-student.learning_rat", "Extra inputs"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_recipe_errors_name_file_and_field(change: dict, field: str, reason: str) -> None:
    with pytest.raises(RecipeError) as info:
        _check(_with(**change))
    assert info.value.source == "/r/recipe.yaml" and info.value.field == field, info.value.message
    assert reason in info.value.reason


def test_bad_yaml_names_the_line() -> None:
    with pytest.raises(RecipeError, match=r"line 3.*not valid YAML"):
        load_recipe("name: t\ndata: {a: 1\n  b: [2\nprofiles: x\n", "r.yaml")


def test_dataset_missing_a_field(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "hi", "response": "{}"}) + "\n")
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"prompt": "a", "response": "{}"}) + "\n" + json.dumps({"prompt": "b"}) + "\n"
    )
    raw = _with(data={"train": "train.jsonl", "test": "test.jsonl"})
    raw.pop("teacher")
    source = str(tmp_path / "recipe.yaml")
    with pytest.raises(SlmopsError, match=r"test.jsonl:2: missing field 'response'"):
        _check(raw, source)
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "no prompt"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": "a", "response": "{}"}) + "\n")
    with pytest.raises(SlmopsError, match=r"train.jsonl:1: missing field 'prompt'"):
        _check(raw, source)


def test_qlora_on_cpu_fails_at_validation() -> None:
    with pytest.raises(UnsupportedOnThisMachine, match=r"step 'finetune'.*qlora.*CUDA GPU"):
        _check(_with(finetune={"method": "qlora"}))


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"unknown stage 'sharpen'"):
        validate_pipeline([PipelineStep("s", "sharpen", {})], {}, "r.yaml")
    with pytest.raises(RecipeError, match=r"'x' is not an earlier step"):
        validate_pipeline([PipelineStep("s", "convert", {}, needs=["x"])], {}, "r.yaml")


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "teacher"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def models_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_endpoint_recipe_validates_up_to_the_missing_student_folder(
    tmp_path: Path, models_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load((ROOT / "examples" / "recipes" / "endpoint-teacher.yaml").read_text())
    raw["teacher"]["endpoint"]["base_url"] = models_endpoint
    data = tmp_path / "data" / "support"
    data.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(json.dumps({"prompt": "refund order 7", "response": "{}"}) + "\n")
    monkeypatch.setenv("TEACHER_API_KEY", "k")
    source = str(tmp_path / "endpoint-teacher.yaml")
    with pytest.raises(RecipeError) as info:
        _check(raw, source)
    assert info.value.field == "train-student.model" and "/models/Qwen2.5-0.5B-Instruct" in info.value.reason
    steps = expand_recipe(load_recipe(yaml.safe_dump(raw), source), PROFILES)
    by_id = {s.id: s for s in steps}
    assert by_id["distill-data"].config["endpoint"]["base_url"] == models_endpoint
    assert by_id["quantize@cuda-fp16"].config["execution_provider"] == "cuda"
    assert "evaluate@teacher" not in by_id  # an endpoint teacher is not measured locally


def test_overrides_for_retrain_and_reoptimize(tmp_path: Path) -> None:
    extra = tmp_path / "sampled.jsonl"
    extra.write_text(json.dumps({"prompt": "dim the lobby lights"}) + "\n")
    recipe = load_recipe(yaml.safe_dump(BASE), "r.yaml")
    changed = apply_overrides(
        recipe,
        {
            "extra_train_data": [str(extra)],
            "parent_version": "3",
            "profiles": {"cpu-int4": {"precision": "int8"}},
            "student": {"max_steps": 7},
        },
    )
    steps = {s.id: s for s in expand_recipe(changed, PROFILES, drift_event_id="d1")}
    assert steps["merge-data"].config["sources"] == ["task-data.train", str(extra)]
    assert steps["distill-data"].config["prompts"] == "merge-data.train"
    assert steps["quantize@cpu-int4"].config["precision"] == "int8"
    assert steps["train-student"].config["max_steps"] == 7
    lineage = steps["publish"].config["lineage"]
    assert lineage["parent_version"] == "3" and lineage["drift_event_id"] == "d1"
    only = apply_overrides(recipe, {"only_profiles": ["cpu-fp32"]})
    assert [s.id for s in expand_recipe(only, PROFILES) if s.stage == "quantize"] == ["quantize@cpu-fp32"]
    # the unchanged profile's steps keep their configs (so the cache reuses them)
    base_steps = {s.id: s for s in expand_recipe(recipe, PROFILES)}
    reopt = {
        s.id: s
        for s in expand_recipe(apply_overrides(recipe, {"profiles": {"cpu-int4": {"int4_block_size": 64}}}), PROFILES)
    }
    changed_ids = [i for i in base_steps if i != "publish" and base_steps[i].config != reopt[i].config]
    assert changed_ids == ["quantize@cpu-int4"]
    # the stored effective recipe reloads to the same recipe
    assert load_recipe(dump_recipe(changed, {"parent_version": "3"}), "r.yaml") == changed


def test_teacher_variants_and_holdout_against_the_parent(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text(json.dumps({"prompt": "kill the lamps in lab 4"}) + "\n")
    raw = _with(data={**BASE["data"], "teacher_variants": ["base", "shifted"]})  # type: ignore[dict-item]
    recipe = apply_overrides(
        load_recipe(yaml.safe_dump(raw), "r.yaml"), {"holdout_data": holdout, "parent_version": "2"}
    )
    steps = {s.id: s for s in expand_recipe(recipe, PROFILES)}
    validate_pipeline(list(steps.values()), {"profiles": PROFILES}, "r.yaml")
    # the teacher learns both variants; the student still learns only the teacher's answers to the prompts
    assert steps["task-data@shifted"].config["variant"] == "shifted"
    assert steps["merge-data@teacher"].config["sources"] == ["task-data.train", "task-data@shifted.train"]
    assert steps["train-teacher"].config["data"] == "merge-data@teacher.train"
    assert steps["distill-data"].config["prompts"] == "task-data.train"
    # the teacher answers the hold-out prompts; new and parent variants are scored on those answers
    assert steps["label-holdout"].config["prompts"] == str(holdout)
    assert steps["label-holdout"].config["teacher"] == "train-teacher.model"
    for profile in ("cpu-int4", "cpu-fp32"):
        ours, theirs = steps[f"evaluate-holdout@{profile}"].config, steps[f"evaluate-parent@{profile}"].config
        assert ours["data"] == theirs["data"] == "label-holdout.dataset"
        assert ours["model"] == f"signal-reference@{profile}.variant" and theirs["model"] == f"parent@{profile}.model"
        assert ours["role"] == theirs["role"] == "holdout"
        assert steps[f"parent@{profile}"].config == {"name": "t", "version": "2", "profile": profile}
    published = {v["profile"]: v for v in steps["publish"].config["variants"]}
    assert published["cpu-int4"]["parent_holdout_evaluation"] == "evaluate-parent@cpu-int4.metrics"
    assert {"evaluate-holdout@cpu-int4", "evaluate-parent@cpu-fp32"} <= set(steps["publish"].needs)
    # without a parent version only the new variants are scored
    alone = {s.id for s in expand_recipe(apply_overrides(load_recipe(yaml.safe_dump(raw), "r.yaml"),
                                                          {"holdout_data": holdout}), PROFILES)}  # fmt: skip
    assert "evaluate-holdout@cpu-int4" in alone and "parent@cpu-int4" not in alone


def test_teacher_variants_need_a_trained_teacher(tmp_path: Path) -> None:
    folder = tmp_path / "teacher"
    folder.mkdir()
    raw = _with(data={**BASE["data"], "teacher_variants": ["shifted"]}, teacher={"folder": str(folder)})  # type: ignore[dict-item]
    with pytest.raises(RecipeError, match=r"data\.teacher_variants.*teacher\.train"):
        expand_recipe(load_recipe(yaml.safe_dump(raw), "r.yaml"), PROFILES, source="r.yaml")
    files = _with(data={"train": "a.jsonl", "test": "b.jsonl", "teacher_variants": ["shifted"]})
    with pytest.raises(RecipeError, match=r"teacher_variants.*needs 'task'"):
        load_recipe(yaml.safe_dump(files), "r.yaml")


def test_submit_validates_before_queuing(sqlite_store: Store, tmp_path: Path) -> None:
    jobs = JobManager(sqlite_store, tmp_path / "data", lambda: PROFILES)
    with pytest.raises(RecipeError, match="profiles"):
        jobs.submit(yaml.safe_dump(_with(profiles=["nope"])), "/r/recipe.yaml")
    with pytest.raises(UnsupportedOnThisMachine):
        jobs.submit(yaml.safe_dump(_with(finetune={"method": "qlora"})))
    assert jobs.list() == []
    job = jobs.submit(yaml.safe_dump(BASE), "/r/recipe.yaml")
    assert job.state == "QUEUED" and job.stage_count == len(_check(BASE))
    assert [j.job_id for j in jobs.list()] == [job.job_id]


def test_teacher_min_accuracy_reaches_distill_data_and_keeps_old_hashes() -> None:
    plain = load_recipe(yaml.safe_dump(BASE), "r.yaml")
    steps = {s.id: s for s in _check(BASE)}
    assert "min_teacher_accuracy" not in steps["distill-data"].config  # the stage's default applies
    strict = _with(teacher={**BASE["teacher"], "min_accuracy": 0.9})
    steps = {s.id: s for s in _check(strict)}
    assert steps["distill-data"].config["min_teacher_accuracy"] == 0.9
    assert load_recipe(yaml.safe_dump(strict), "r.yaml").recipe_hash() != plain.recipe_hash()
    assert '"min_accuracy"' not in plain.canonical_json() and '"drift_reference"' not in plain.canonical_json()
    with pytest.raises(RecipeError, match="min_accuracy"):
        load_recipe(yaml.safe_dump(_with(teacher={**BASE["teacher"], "min_accuracy": 1.5})), "r.yaml")
