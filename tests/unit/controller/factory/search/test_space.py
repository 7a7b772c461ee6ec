"""The recipe's ``search:`` section: dimensions, metric, constraints and budget parse into typed settings; bad
keys and impossible ranges are RecipeErrors naming the field; sampling stays inside the space; a parameter set
splits into each stage's config changes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from controller.factory.recipe import apply_overrides, load_recipe, load_recipe_file
from controller.factory.search.space import apply_to_config, from_stored, split_params, suggest, to_stored
from shared.errors import ConfigError, RecipeError

ROOT = Path(__file__).resolve().parents[5]
BASE: dict[str, Any] = {
    "name": "r",
    "data": {"task": "smart-building"},
    "student": {"init": {"hidden_size": 64, "num_heads": 2, "intermediate_size": 128}, "max_steps": 10},
    "profiles": ["cpu-int4"],
}
SPACE = {
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "max_steps": {"low": 100, "high": 300, "step": 100},
    "batch_size": [16, 32],
    "hidden_size": [32, 64],
    "num_layers": {"low": 1, "high": 3},
    "lora_r": [4, 8],
    "lora_alpha": [8, 16],
    "lora_targets": [["q_proj", "v_proj"], "all-linear"],
    "int4_block_size": [32, 64],
}


def _recipe(search: dict[str, Any] | None = None, **changes: Any):  # type: ignore[no-untyped-def]
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    if search is not None:
        raw["search"] = search
    return load_recipe(yaml.safe_dump(raw), "/r/recipe.yaml")


def test_a_full_search_section_parses_with_defaults() -> None:
    s = _recipe({"space": SPACE, "budget": {"timeout_s": 60}}).search
    assert s is not None
    assert s.space.dimensions() == list(SPACE)
    assert (s.metric.name, s.metric.direction) == ("accuracy", "maximize")  # exact match, higher is better
    assert (s.budget.n_trials, s.budget.timeout_s) == (None, 60)
    assert (s.sampler.kind, s.sampler.seed, s.pruner.kind, s.on_retrain) == ("tpe", 0, "median", "reuse")
    assert s.constraints.from_profile is True
    assert _recipe({"space": {"batch_size": [8]}}).search.budget.n_trials == 10  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("search", "field", "reason"),
    [
        ({"space": {"learning_rat": [0.1]}}, "search.space.learning_rat", "Extra inputs are not permitted"),
        ({"space": {"batch_size": [8]}, "budgett": {}}, "search.budgett", "Extra inputs are not permitted"),
        ({"space": {"batch_size": [8]}, "constraints": {"max_ram": 1}}, "search.constraints.max_ram", "Extra"),
        ({"space": {}}, "search.space", "at least one dimension"),
        ({"space": {"batch_size": []}}, "search.space", "empty"),
        ({"space": {"learning_rate": {"low": 0.1, "high": 0.01}}}, "search.space.learning_rate", "below high"),
        ({"space": {"learning_rate": {"low": 0, "high": 0.1, "log": True}}}, "search.space.learning_rate", "low > 0"),
        ({"space": {"int4_block_size": [48]}}, "search.space", "int4_block_size 48"),
        ({"space": {"batch_size": [8]}, "budget": {}}, "search.budget", "n_trials and/or timeout_s"),
        ({"space": {"batch_size": [8]}, "budget": {"n_trials": 0}}, "search.budget.n_trials", "greater than 0"),
        ({"space": {"batch_size": [8]}, "on_retrain": "maybe"}, "search.on_retrain", "'reuse' or 'search'"),
        ({"space": {"batch_size": [8]}, "metric": {"name": "bleu"}}, "search.metric.name", "accuracy"),
    ],
)
def test_bad_search_settings_name_the_key(search: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(RecipeError) as info:
        _recipe(search)
    assert isinstance(info.value, ConfigError)
    assert info.value.field.startswith(field), info.value.message
    assert reason in info.value.reason, info.value.message


def test_a_recipe_without_search_hashes_as_before() -> None:
    recipe = _recipe()
    assert '"search"' not in recipe.canonical_json()
    searched = _recipe({"space": {"batch_size": [8]}})
    assert searched.recipe_hash() != recipe.recipe_hash()
    # a retrain's override (the parent's best parameters) survives the round trip through the effective recipe
    reused = apply_overrides(searched, {"search": {"reuse_params": {"batch_size": 8}, "reuse_from": "r:1"}})
    assert reused.search is not None and reused.search.reuse_params == {"batch_size": 8}


def test_suggested_parameters_stay_in_the_space() -> None:
    space = _recipe({"space": SPACE}).search.space  # type: ignore[union-attr]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        params = suggest(study.ask(), space)
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert params["max_steps"] in (100, 200, 300) and params["num_layers"] in (1, 2, 3)
        assert params["lora_targets"] in (["q_proj", "v_proj"], "all-linear")
        assert from_stored(to_stored(params)) == params


def test_parameters_split_into_each_stage_and_keep_the_ffn_ratio() -> None:
    params = {"learning_rate": 0.01, "hidden_size": 32, "num_layers": 3, "lora_r": 4, "lora_targets": ["q_proj"]}
    params["int4_block_size"] = 64
    split = split_params(params)
    assert split == {
        "student": {"learning_rate": 0.01, "init": {"hidden_size": 32, "num_layers": 3}},
        "finetune": {"lora_r": 4, "target_modules": ["q_proj"]},
        "quantize": {"int4_block_size": 64},
    }
    assert split_params({"learning_rate": 0.01}, "finetune")["finetune"] == {"learning_rate": 0.01}
    student = apply_to_config(BASE["student"], split["student"])
    assert student["init"] == {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 3}
    assert (student["learning_rate"], student["max_steps"]) == (0.01, 10)


def test_the_example_search_recipe_parses() -> None:
    recipe = load_recipe_file(ROOT / "examples" / "recipes" / "search.yaml")
    assert recipe.search is not None and recipe.search.budget.n_trials
    assert "hidden_size" in recipe.search.space.dimensions()
