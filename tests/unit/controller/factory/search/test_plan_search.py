"""Planning a search: the ``search`` step reads the distilled data and the validation split, and its best
configuration is bound to exactly the steps whose values the space changes; the target profile's budgets
become the constraints; impossible combinations are RecipeErrors naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from controller.factory.plan import expand_recipe
from controller.factory.recipe import load_recipe
from shared.errors import RecipeError
from shared.profiles import bundled_profiles_dir, load_profiles

PROFILES = load_profiles(bundled_profiles_dir())
BASE: dict[str, Any] = {
    "name": "r",
    "data": {"task": "smart-building"},
    "student": {"init": {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128}, "max_steps": 10},
    "profiles": ["cpu-fp32", "cpu-int4"],
}


def _steps(search: dict[str, Any], **changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    raw["search"] = search
    recipe = load_recipe(yaml.safe_dump(raw), "/r/recipe.yaml")
    return {s.id: s for s in expand_recipe(recipe, PROFILES, source="/r/recipe.yaml")}


def test_the_search_feeds_the_student_the_target_build_and_publish() -> None:
    space = {"learning_rate": [0.001, 0.01], "int4_block_size": [32, 64]}
    steps = _steps({"profile": "cpu-int4", "space": space, "constraints": {"max_parameters": 5000}})
    search = steps["search"]
    assert search.config["data"] == "task-data.train" and search.config["validation"] == "task-data.validation"
    assert search.config["build"]["precision"] == "int4" and search.config["build"]["profile"] == "cpu-int4"
    # the profile's budgets (cpu-int4: 5000 ms, 2048 MB) and the recipe's parameter budget
    budgets = {"max_latency_ms": 5000.0, "max_memory_mb": 2048.0, "max_parameters": 5000.0}
    assert search.config["budgets"] == budgets
    assert "data" not in search.config["student"]  # references are bound as the stage's own inputs
    ordered = list(steps)
    assert ordered.index("search") < ordered.index("train-student")
    for sid in ("train-student", "quantize@cpu-int4", "publish"):
        assert steps[sid].config["search"] == "search.best_config" and "search" in steps[sid].needs, sid
    assert "search" not in steps["quantize@cpu-fp32"].config  # not the target: its build is not searched


def test_budgets_follow_the_target_profile_unless_told_otherwise() -> None:
    steps = _steps({"space": {"batch_size": [8, 16]}, "constraints": {"from_profile": False, "max_size_mb": 3}})
    assert steps["search"].config["build"]["profile"] == "cpu-fp32"  # the recipe's first profile
    assert steps["search"].config["budgets"] == {"max_size_mb": 3.0}
    assert "search" not in steps["quantize@cpu-fp32"].config  # no build dimension searched


def test_lora_dimensions_feed_finetune() -> None:
    steps = _steps({"space": {"lora_r": [4, 8]}}, finetune={"method": "lora", "max_steps": 5})
    assert steps["finetune"].config["search"] == "search.best_config"
    assert "search" not in steps["train-student"].config  # nothing of the student is searched
    assert steps["search"].config["finetune"]["method"] == "lora"
    assert steps["search"].config["finetune_data"] == "task-data.train"


@pytest.mark.parametrize(
    ("search", "changes", "field", "reason"),
    [
        ({"profile": "cpu-int8", "space": {"batch_size": [8]}}, {}, "search.profile", ""),
        ({"profile": "nope", "space": {"batch_size": [8]}}, {}, "search.profile", "unknown profile 'nope'"),
        ({"space": {"lora_r": [4]}}, {}, "search.space", "finetune section with LoRA"),
        ({"space": {"int4_block_size": [64]}}, {}, "search.space.int4_block_size", "builds fp32, not int4"),
        ({"space": {"hidden_size": [48]}}, {"student": {"init": {"num_heads": 5}}}, "search.space.hidden_size", ""),
        ({"space": {"num_layers": [1, 2]}}, {"student": {"model": "/m"}}, "search.space", "student.init"),
    ],
)
def test_impossible_searches_are_refused(search: dict[str, Any], changes: Any, field: str, reason: str) -> None:
    if search.get("profile") == "cpu-int8":  # a known profile the recipe does not build: searched all the same
        assert _steps(search)["search"].config["build"]["precision"] == "int8"
        return
    with pytest.raises(RecipeError) as info:
        _steps(search, **changes)
    assert info.value.field == field and reason in info.value.reason, info.value.message
