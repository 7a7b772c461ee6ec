"""The planner: steps wired from what stages declare (typed input/output ports), not by hand.

Outputs are matched to inputs by artifact name and kind; a missing input names the step, stage and port;
a stage registered here (one class + its registration) is planned when a recipe lists it under ``stages:``;
the example recipes plan to the same steps and edges as the hand-wired expansion did, with stable hashes and
cache keys the runner uses as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controller.cli.main import main
from controller.factory.cache import StageCache
from controller.factory.pipeline import PipelineStep, validate_pipeline
from controller.factory.plan import Planner, describe, expand_recipe, plan_hash, plan_recipe
from controller.factory.plan.planner import Given
from controller.factory.recipe import apply_overrides, load_recipe, load_recipe_file
from controller.factory.runner import PipelineRunner
from controller.factory.stage import (
    Port,
    Resources,
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    get_stage,
    register_stage,
    stage_names,
    stage_spec,
)
from shared.errors import RecipeError
from shared.profiles import bundled_profiles_dir, load_profiles

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


def _recipe(**changes: object):  # type: ignore[no-untyped-def]
    raw = json.loads(json.dumps(BASE))
    raw.update(changes)
    return load_recipe(yaml.safe_dump(raw), "/r/recipe.yaml")


# --- a stage defined here: one class + its registration -------------------------------------------------
class SharpenConfig(StageConfig):
    model: str = "model"
    amount: float = 0.5


@register_stage
class SharpenStage(Stage):
    """Reads a Hugging Face model and provides one (e.g. pruning); the planner puts it wherever asked."""

    name = "test-sharpen"
    config_cls = SharpenConfig
    inputs = (Port("model", "hf-model"),)
    outputs = (Port("model", "hf-model"),)
    resources = Resources(num_cpus=1, num_gpus=1, memory_mb=1024)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        raise NotImplementedError


class SignConfig(StageConfig):
    model: str = "model"


@register_stage
class SignStage(Stage):
    name = "test-sign"
    config_cls = SignConfig
    inputs = (Port("model", "onnx-model"),)
    outputs = (Port("model", "onnx-model"),)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        raise NotImplementedError


# --- the generic planner ---------------------------------------------------------------------------------
def test_planner_matches_outputs_to_inputs(tmp_path: Path) -> None:
    extra = tmp_path / "extra.jsonl"
    planner = Planner("r.yaml")
    planner.add("data", "task-data", {"train_size": 4}, provides={"train": "train", "test": "test"})
    planner.add("merge", "merge-data", {}, {"sources": ["train", Given(str(extra), "dataset")]}, {"train": "prompts"})
    planner.give("teacher", "/models/teacher", "hf-model")
    planner.add("answers", "distill-data", {}, {"prompts": "prompts", "teacher": "teacher"}, {"dataset": "d"})
    planner.add("student", "train-student", {"model": "/models/s"}, {"data": "d", "validation": "train"})
    steps = {s.id: s for s in planner.steps}
    assert steps["merge"].config["sources"] == ["data.train", str(extra)]
    assert steps["merge"].needs == ["data"]
    assert steps["answers"].config == {"prompts": "merge.train", "teacher": "/models/teacher"}
    assert steps["answers"].needs == ["merge"]  # a recipe-given path is no need
    assert steps["student"].config["data"] == "answers.dataset" and steps["student"].needs == ["answers", "data"]
    # a later provider of a name replaces it for later requests
    planner.add("again", "merge-data", {}, {"sources": ["prompts"]}, {"train": "prompts"})
    assert planner.ref("prompts") == "again.train"


def test_missing_input_names_the_step_stage_and_port() -> None:
    planner = Planner("r.yaml")
    planner.add("data", "task-data", {}, provides={"train": "train"})
    with pytest.raises(RecipeError) as info:
        planner.add("convert", "convert", {}, {"model": "student"})
    err = info.value
    assert err.source == "r.yaml" and err.field == "convert.model"
    assert "stage 'convert'" in err.reason and "input 'model' (hf-model)" in err.reason and "'student'" in err.reason
    with pytest.raises(RecipeError, match=r"input 'model' takes hf-model, but 'train' is dataset"):
        planner.add("convert", "convert", {}, {"model": "train"})
    with pytest.raises(RecipeError, match=r"input 'model' \(hf-model\) is not connected"):
        planner.add("convert", "convert", {}, {})
    with pytest.raises(RecipeError, match=r"stage 'convert' has no input 'weights'"):
        planner.add("convert", "convert", {}, {"weights": "train"})
    with pytest.raises(RecipeError, match=r"unknown stage 'sharpen'"):
        planner.add("s", "sharpen", {})


def test_an_explicit_config_value_wins_and_step_refs_become_needs() -> None:
    planner = Planner()
    planner.add("data", "task-data", {}, provides={"train": "train", "validation": "validation"})
    planner.add("other", "task-data", {"variant": "shifted"}, provides={"train": "other"})
    planner.add("m", "merge-data", {"sources": ["other.train"]}, {"sources": ["train"]}, {"train": "x"})
    assert planner.step("m").config["sources"] == ["other.train"] and planner.step("m").needs == ["other"]
    with pytest.raises(RecipeError, match=r"'other.trian' names no output of step 'other'"):
        planner.add("m2", "merge-data", {"sources": ["other.trian"]})
    with pytest.raises(RecipeError, match=r"input 'model' \(hf-model\) of stage 'convert': 'm.train' is dataset"):
        planner.add("c", "convert", {"model": "m.train"})


# --- stage declarations ----------------------------------------------------------------------------------
def test_every_stage_declares_ports_on_its_config_fields() -> None:
    for name in stage_names():
        spec = stage_spec(name)
        spec.check()
        assert spec.outputs, f"{name} declares no outputs"

    class BadConfig(StageConfig):
        data: str = ""

    class Bad(Stage):
        name = "test-bad"
        config_cls = BadConfig
        inputs = (Port("model", "hf-model"),)

        def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
            raise NotImplementedError

    with pytest.raises(ValueError, match=r"input ports \['model'\] name no field"):
        register_stage(Bad)
    with pytest.raises(ValueError, match="unknown kind"):
        Port("x", "tensor")


def test_resources_follow_the_config() -> None:
    finetune, evaluate = get_stage("finetune"), get_stage("evaluate")
    assert finetune.resources_for(finetune.parse_config({"method": "qlora"})).num_gpus == 1
    assert finetune.resources_for(finetune.parse_config({"method": "lora"})).num_gpus == 0
    gpu = evaluate.resources_for(evaluate.parse_config({"execution_provider": "cuda", "threads": 2}))
    assert (gpu.num_gpus, gpu.num_cpus) == (1, 2)
    assert gpu.ray_options()["memory"] == 2048 * 1024 * 1024


# --- stages a recipe asks for --------------------------------------------------------------------------
def test_a_stage_registered_here_is_planned_where_the_recipe_asks() -> None:
    recipe = _recipe(
        stages=[
            {"stage": "test-sharpen", "config": {"amount": 0.9}},
            {"stage": "test-sign", "after": "variant", "inputs": {"model": "variant"}, "outputs": {"model": "variant"}},
        ]
    )
    steps = {s.id: s for s in expand_recipe(recipe, PROFILES)}
    ids = list(steps)
    assert ids.index("train-student") < ids.index("test-sharpen") < ids.index("convert")
    assert steps["test-sharpen"].config == {"amount": 0.9, "model": "train-student.model"}
    assert steps["test-sharpen"].needs == ["train-student"]
    # what later phases convert and quantize is the sharpened model
    assert steps["convert"].config["model"] == "test-sharpen.model"
    assert steps["quantize@cpu-int4"].config["model"] == "test-sharpen.model"
    # after a per-profile phase: once per profile, in that profile's scope
    assert steps["test-sign@cpu-int4"].config["model"] == "quantize@cpu-int4.model"
    assert steps["test-sign@cpu-int4"].profile == "cpu-int4"
    # the drift reference is measured on what the recipe's stage made, and evaluate/publish read that folder
    assert steps["signal-reference@cpu-fp32"].config["variant"] == "test-sign@cpu-fp32.model"
    assert steps["evaluate@cpu-fp32"].config["model"] == "signal-reference@cpu-fp32.variant"
    published = {v["profile"]: v for v in steps["publish"].config["variants"]}
    assert published["cpu-int4"]["model"] == "signal-reference@cpu-int4.variant"
    assert published["cpu-int4"]["precision"] == "int4"  # what the variant was built as
    plan = describe(list(steps.values()), "t")
    row = next(p for p in plan.steps if p.step.id == "test-sharpen")
    assert row.resources.num_gpus == 1 and row.inputs == {"model": "train-student.model"}
    # kinds are checked: without the mapping, test-sign's model port would get the (Hugging Face) "model"
    with pytest.raises(RecipeError, match=r"input 'model' takes onnx-model, but 'model' is hf-model"):
        expand_recipe(_recipe(stages=[{"stage": "test-sign", "after": "variant"}]), PROFILES)


def test_a_recipe_stage_with_a_missing_input_is_refused() -> None:
    raw = {**BASE, "teacher": None, "stages": [{"stage": "test-sharpen", "inputs": {"model": "teacher"}}]}
    raw.pop("teacher")
    with pytest.raises(RecipeError) as info:
        expand_recipe(load_recipe(yaml.safe_dump(raw), "r.yaml"), PROFILES, source="r.yaml")
    assert info.value.field == "test-sharpen.model"
    assert "stage 'test-sharpen'" in info.value.reason and "input 'model'" in info.value.reason
    for entry, field, reason in [
        ({"stage": "test-sharpen", "after": "dessert"}, "stages[0].after", "unknown phase 'dessert'"),
        ({"stage": "test-sharpen", "after": "publish"}, "stages[0].after", "after 'publish'"),
        ({"stage": "nope"}, "stages[0].stage", "unknown stage 'nope'"),
        ({"stage": "test-sharpen", "inputs": {"weights": "model"}}, "stages[0].inputs", "no input 'weights'"),
    ]:
        with pytest.raises(RecipeError) as info:
            expand_recipe(_recipe(stages=[entry]), PROFILES, source="/r/recipe.yaml")
        assert (info.value.field, reason in info.value.reason) == (field, True), info.value.message


def test_stages_leave_the_recipe_hash_of_recipes_without_them() -> None:
    recipe = _recipe()
    assert '"stages"' not in recipe.canonical_json()
    assert _recipe(stages=[{"stage": "test-sharpen"}]).recipe_hash() != recipe.recipe_hash()


# --- the example recipes -------------------------------------------------------------------------------
# Steps and dependency edges the hand-wired expand() (before the planner) produced for these recipes.
_DEMO_EDGES = [
    ("task-data", []),
    ("task-data@shifted", []),
    ("merge-data@teacher", ["task-data", "task-data@shifted"]),
    ("train-teacher", ["merge-data@teacher", "task-data"]),
    ("distill-data", ["task-data", "train-teacher"]),
    ("train-student", ["distill-data", "task-data", "train-teacher"]),
    ("convert", ["train-student"]),
    ("convert@teacher", ["train-teacher"]),
    ("quantize@cpu-int4", ["convert", "train-student"]),
    ("evaluate@cpu-int4", ["quantize@cpu-int4", "task-data"]),
    ("quantize@cpu-fp32", ["convert", "train-student"]),
    ("evaluate@cpu-fp32", ["quantize@cpu-fp32", "task-data"]),
    ("evaluate@student-fp32", ["convert", "task-data"]),
    ("evaluate@teacher", ["convert@teacher", "task-data"]),
    ("publish", ["distill-data", "evaluate@cpu-fp32", "evaluate@cpu-int4", "quantize@cpu-fp32", "quantize@cpu-int4"]),
]
BEFORE = {
    "demo.yaml": _DEMO_EDGES,
    "quick.yaml": _DEMO_EDGES,
    "own-data.yaml": [  # a teacher trained on the recipe's own JSONL files (no task-data steps)
        ("train-teacher", []),
        ("distill-data", ["train-teacher"]),
        ("train-student", ["distill-data", "train-teacher"]),
        ("convert", ["train-student"]),
        ("convert@teacher", ["train-teacher"]),
        ("quantize@cpu-int4", ["convert", "train-student"]),
        ("evaluate@cpu-int4", ["quantize@cpu-int4"]),
        ("quantize@cpu-fp32", ["convert", "train-student"]),
        ("evaluate@cpu-fp32", ["quantize@cpu-fp32"]),
        ("evaluate@student-fp32", ["convert"]),
        ("evaluate@teacher", ["convert@teacher"]),
        _DEMO_EDGES[-1],  # publish: the same needs as the demo's
    ],
    "search.yaml": [
        ("task-data", []),
        ("task-data@shifted", []),
        ("merge-data@teacher", ["task-data", "task-data@shifted"]),
        ("train-teacher", ["merge-data@teacher", "task-data"]),
        ("distill-data", ["task-data", "train-teacher"]),
        ("search", ["distill-data", "task-data", "train-teacher"]),
        ("train-student", ["distill-data", "search", "task-data", "train-teacher"]),
        ("convert", ["train-student"]),
        ("convert@teacher", ["train-teacher"]),
        ("quantize@cpu-int4", ["convert", "search", "train-student"]),
        ("evaluate@cpu-int4", ["quantize@cpu-int4", "task-data"]),
        ("quantize@cpu-fp32", ["convert", "train-student"]),
        ("evaluate@cpu-fp32", ["quantize@cpu-fp32", "task-data"]),
        ("evaluate@student-fp32", ["convert", "task-data"]),
        ("evaluate@teacher", ["convert@teacher", "task-data"]),
        (
            "publish",
            [
                "distill-data",
                "evaluate@cpu-fp32",
                "evaluate@cpu-int4",
                "quantize@cpu-fp32",
                "quantize@cpu-int4",
                "search",
            ],
        ),
    ],
    "endpoint-teacher.yaml": [
        ("distill-data", []),
        ("train-student", ["distill-data"]),
        ("convert", ["train-student"]),
        ("quantize@cuda-fp16", ["convert", "train-student"]),
        ("evaluate@cuda-fp16", ["quantize@cuda-fp16"]),
        ("quantize@cpu-int4", ["convert", "train-student"]),
        ("evaluate@cpu-int4", ["quantize@cpu-int4"]),
        ("evaluate@student-fp32", ["convert"]),
        (
            "publish",
            ["distill-data", "evaluate@cpu-int4", "evaluate@cuda-fp16", "quantize@cpu-int4", "quantize@cuda-fp16"],
        ),
    ],
}


def _with_drift_reference(edges: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The edges with the drift-reference phase (issue #17): ``signal-reference@P`` right after each variant
    step, reading it and the validation/prompts splits (task-data's, when it makes them); evaluate@P and
    publish read the variant through it."""
    data = ["task-data"] if any(step == "task-data" for step, _ in edges) else []
    out: list[tuple[str, list[str]]] = []
    for step, needs in edges:
        renamed = sorted({f"signal-reference@{n.split('@')[1]}" if n.startswith("quantize@") else n for n in needs})
        out.append((step, renamed if step.startswith("evaluate@") or step == "publish" else needs))
        if step.startswith("quantize@"):
            out.append((f"signal-reference@{step.split('@')[1]}", sorted([step, *data])))
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples" / "recipes").glob("*.yaml")))
def test_example_plans_are_stable_and_as_before(name: str) -> None:
    recipe = load_recipe_file(ROOT / "examples" / "recipes" / name)
    first = expand_recipe(recipe, PROFILES, job_id="j1")
    second = expand_recipe(load_recipe_file(ROOT / "examples" / "recipes" / name), PROFILES, job_id="j1")
    assert plan_hash(first) == plan_hash(second)
    assert [(s.id, sorted(s.needs)) for s in first] == _with_drift_reference(BEFORE[name])
    off = apply_overrides(recipe, {"evaluation": {"drift_reference": False}})
    assert [(s.id, sorted(s.needs)) for s in expand_recipe(off, PROFILES, job_id="j1")] == BEFORE[name]
    keys = [p.key for p in plan_recipe(recipe, PROFILES, job_id="j1").steps]
    assert keys == [p.key for p in plan_recipe(recipe, PROFILES, job_id="j2").steps]  # the job id is not in them
    assert all(len(k) == 32 for k in keys[:-1]) and keys[-1] == ""  # publish is never cached


def test_changing_one_profile_changes_only_its_cache_keys() -> None:
    recipe = _recipe()
    before = {p.step.id: p.key for p in plan_recipe(recipe, PROFILES).steps}
    changed = apply_overrides(recipe, {"profiles": {"cpu-int4": {"int4_block_size": 64}}})
    after = {p.step.id: p.key for p in plan_recipe(changed, PROFILES).steps}
    changed_ids = sorted(i for i in before if before[i] != after[i])
    assert changed_ids == ["evaluate@cpu-int4", "quantize@cpu-int4", "signal-reference@cpu-int4"]


def test_steps_reading_a_never_cached_step_are_keyed_at_run_time(tmp_path: Path) -> None:
    holdout = tmp_path / "holdout.jsonl"
    holdout.write_text(json.dumps({"prompt": "dim the lights"}) + "\n")
    recipe = apply_overrides(_recipe(), {"holdout_data": str(holdout), "parent_version": "2"})
    keys = {p.step.id: p.key for p in plan_recipe(recipe, PROFILES).steps}
    assert keys["parent@cpu-int4"] == "" and keys["evaluate-parent@cpu-int4"] is None
    assert keys["evaluate-holdout@cpu-int4"]


def test_the_runner_uses_the_planned_cache_keys(tmp_path: Path) -> None:
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"prompt": "open the blinds"}) + "\n")
    planner = Planner()
    sizes = {"train_size": 6, "validation_size": 2, "test_size": 2}
    planner.add("task-data", "task-data", sizes, provides={"train": "train"})
    planner.add("merge-data", "merge-data", {}, {"sources": ["train", Given(str(extra), "dataset")]})
    planned = {p.step.id: p.key for p in describe(planner.steps).steps}
    cache = StageCache(tmp_path / "cache")
    res = PipelineRunner(tmp_path / "job", cache).run(planner.steps)
    assert {sid: o.key for sid, o in res.outcomes.items()} == planned
    again = PipelineRunner(tmp_path / "job2", StageCache(tmp_path / "cache")).run(planner.steps)
    assert again.cached == ["task-data", "merge-data"]
    extra.write_text(json.dumps({"prompt": "close the blinds"}) + "\n")  # a given file's content is in the key
    assert describe(planner.steps).steps[1].key != planned["merge-data"]


# --- quantize.runtime -----------------------------------------------------------------------------------
def test_the_variant_runtime_comes_from_the_step_that_builds_it() -> None:
    steps = {s.id: s for s in expand_recipe(_recipe(profiles=["cpu-int4-foundry", "cpu-int4"]), PROFILES)}
    assert steps["quantize@cpu-int4-foundry"].config["runtime"] == "foundry-local"
    published = {v["profile"]: v["runtime"] for v in steps["publish"].config["variants"]}
    assert published == {"cpu-int4-foundry": "foundry-local", "cpu-int4": "ort-genai"}
    with pytest.raises(Exception, match="runtime"):
        get_stage("quantize").parse_config({"profile": "p", "precision": "int4", "runtime": "tensorrt-llm"})


def test_a_runtime_adapter_for_foundry_local_is_refused_before_queuing() -> None:
    recipe = _recipe(profiles=["cpu-int4-foundry"], finetune={"method": "lora", "merge": False})
    steps = expand_recipe(recipe, PROFILES, source="/r/recipe.yaml")
    with pytest.raises(RecipeError) as info:
        validate_pipeline(steps, {"profiles": PROFILES}, "/r/recipe.yaml")
    assert info.value.field == "profiles.cpu-int4-foundry.runtime"
    assert "cannot apply a runtime LoRA adapter" in info.value.reason


# --- slmops build RECIPE --plan ---------------------------------------------------------------------------
def test_build_plan_prints_the_plan_without_a_controller(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = ROOT / "examples" / "recipes" / "quick.yaml"
    assert main(["build", str(recipe), "--plan", "--format", "json", "--controller", "127.0.0.1:1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recipe"] == "smart-building-quick" and len(plan["plan_hash"]) == 64
    by_id = {s["id"]: s for s in plan["steps"]}
    assert by_id["train-student"]["inputs"] == {
        "data": "distill-data.dataset",
        "validation": "task-data.validation",
        "teacher": "train-teacher.model",
    }
    assert by_id["train-student"]["outputs"] == {"model": "hf-model"}
    assert by_id["train-student"]["resources"]["num_cpus"] == 2.0
    expected = {p.step.id: p.key for p in plan_recipe(load_recipe_file(recipe), PROFILES).steps}
    assert {s["id"]: s["cache_key"] for s in plan["steps"]} == expected
    assert main(["build", str(recipe), "--plan"]) == 0
    table = capsys.readouterr().out
    assert "quantize@cpu-int4" in table and "never cached" in table and "nothing submitted" in table


def test_build_plan_reports_recipe_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "profiles": ["npu-int4"]}))
    assert main(["build", str(bad), "--plan"]) == 2
    assert "unknown device profile 'npu-int4'" in capsys.readouterr().err


def test_pipeline_steps_round_trip() -> None:
    step = PipelineStep("a", "convert", {"model": "/m"}, ["b"], "p")
    assert PipelineStep.from_dict(step.to_dict()) == step
