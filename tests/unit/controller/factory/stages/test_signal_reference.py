"""Stage ``signal-reference`` on the tiny onnxruntime-genai model: the variant copy carries the reference."""

from __future__ import annotations

import json
from pathlib import Path

from controller.factory.stage import StageContext, get_stage
from shared.signals import REFERENCE_FILE, SIGNAL_NAMES, DriftReference


def test_reference_measures_every_signal_on_validation_and_ships_the_sketch(
    tmp_path: Path, tiny_og_model: dict[str, Path], task_data: dict[str, Path]
) -> None:
    stage = get_stage("signal-reference")
    config = stage.config_cls(
        variant=str(tiny_og_model["int4"]),
        validation=str(task_data["validation"]),
        prompts=str(task_data["train"]),
        task="smart-building",
        limit=12,
        max_new_tokens=8,
    )
    result = stage.run(config, StageContext(work_dir=tmp_path, inputs={}))
    out = result.outputs["variant"]
    assert (out / "genai_config.json").is_file() and (out / REFERENCE_FILE).is_file()
    assert not (Path(tiny_og_model["int4"]) / REFERENCE_FILE).exists()  # the input folder is untouched
    ref = DriftReference.load(out)
    assert ref is not None and ref.n_validation == 12
    assert set(ref.signals) == set(SIGNAL_NAMES)
    assert all(s.n == 12 for s in ref.signals.values())
    assert ref.signals["answer_logprob_mean"].mean < 0
    assert ref.accuracy == 0.0  # a random-init model answers nothing right
    # validation prompts share the training vocabulary: low novelty
    assert ref.signals["input_novelty"].mean < 0.1
    assert ref.sketch is not None and ref.sketch.novelty("zzyzx qwerty") == 1.0
    assert json.loads((out / REFERENCE_FILE).read_text())["format"] == 1
    assert result.metrics["n_validation"] == 12


def test_every_build_plans_it_after_each_variant_and_before_evaluate_and_publish(tmp_path: Path) -> None:
    from controller.demo.story import ROOT
    from controller.factory.plan import expand_recipe
    from controller.factory.recipe import apply_overrides, load_recipe_file
    from shared.profiles import load_profiles

    path = ROOT / "examples" / "recipes" / "demo.yaml"
    recipe = load_recipe_file(path)
    profiles = load_profiles(ROOT / "examples" / "profiles")
    ids = [s.id for s in expand_recipe(recipe, profiles)]
    for profile in ("cpu-int4", "cpu-fp32"):
        at = ids.index(f"signal-reference@{profile}")
        assert ids.index(f"quantize@{profile}") < at < ids.index(f"evaluate@{profile}") < ids.index("publish")
    steps = {s.id: s for s in expand_recipe(recipe, profiles)}
    assert steps["publish"].config["variants"][0]["model"] == "signal-reference@cpu-int4.variant"
    assert steps["signal-reference@cpu-int4"].config["prompts"] == "task-data.train"
    assert steps["signal-reference@cpu-int4"].config["task"] == "smart-building"
    # placed by the recipe itself: planned once, where the recipe says
    placed = apply_overrides(recipe, {"stages": [{"stage": "signal-reference", "after": "variant"}]}, str(path))
    planned = expand_recipe(placed, profiles)
    assert [s.id for s in planned].count("signal-reference@cpu-int4") == 1
    assert "max_new_tokens" not in next(s for s in planned if s.id == "signal-reference@cpu-int4").config
    # a retrain adds sampled prompts: the sketch then covers their words too
    extra = tmp_path / "sampled.jsonl"
    extra.write_text(json.dumps({"prompt": "kindly dim the huddle space"}) + "\n")
    retrain = apply_overrides(recipe, {"extra_train_data": [str(extra)]}, str(path))
    steps = {s.id: s for s in expand_recipe(retrain, profiles)}
    assert steps["signal-reference@cpu-int4"].config["prompts"] == "merge-data.train"
