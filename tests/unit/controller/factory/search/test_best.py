"""The best configuration overrides the hand-set values of the stages it concerns (and nothing else), and a
stage without a search input keeps its config dump, hence its cache key, exactly as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.factory.search.best import apply_best, best_config, lineage_entry, write_best_config
from controller.factory.stages.finetune import FinetuneConfig
from controller.factory.stages.quantize import QuantizeConfig
from controller.factory.stages.train_student import TrainStudentConfig
from controller.loop.retrain import reuse_overrides
from shared.errors import StageError

PARAMS = {"learning_rate": 0.02, "hidden_size": 96, "lora_r": 4, "lora_targets": "all-linear", "int4_block_size": 64}


@pytest.fixture
def best(tmp_path: Path) -> Path:
    doc = best_config(PARAMS, "student", trial=3, value=0.8, metric="accuracy", study="s", profile="cpu-int4")
    return write_best_config(tmp_path / "best_config.json", doc)


def test_each_stage_takes_its_own_section(best: Path) -> None:
    init = {"hidden_size": 64, "num_heads": 4, "intermediate_size": 256}
    student = TrainStudentConfig(init=init, learning_rate=0.003, max_steps=450, search="search.best_config")  # type: ignore[arg-type]
    new, changes = apply_best(student, "student", best, "train-student")
    assert (new.learning_rate, new.max_steps) == (0.02, 450)  # searched value wins, the rest stays hand-set
    assert new.init is not None and (new.init.hidden_size, new.init.intermediate_size) == (96, 384)
    assert changes == {"learning_rate": 0.02, "init": {"hidden_size": 96}}

    finetune, _ = apply_best(FinetuneConfig(lora_r=16, learning_rate=1e-3), "finetune", best, "finetune")
    assert (finetune.lora_r, finetune.target_modules, finetune.learning_rate) == (4, "all-linear", 1e-3)

    quantize, _ = apply_best(QuantizeConfig(profile="cpu-int4", precision="int4"), "quantize", best, "quantize")
    assert quantize.int4_block_size == 64


def test_an_invalid_searched_value_fails_the_stage(tmp_path: Path) -> None:
    path = write_best_config(tmp_path / "b.json", best_config({"int4_block_size": 8}, "student"))
    with pytest.raises(StageError, match="not valid here"):
        apply_best(QuantizeConfig(profile="p", precision="int4"), "quantize", path, "quantize")


def test_configs_without_a_search_dump_as_before() -> None:
    for cfg in (TrainStudentConfig(model="/m"), FinetuneConfig(), QuantizeConfig(profile="p", precision="int4")):
        assert "search" not in cfg.model_dump(mode="json")  # unchanged cache keys for every existing recipe
    assert TrainStudentConfig(model="/m", search="s.best_config").model_dump()["search"] == "s.best_config"


def test_the_lineage_entry_is_what_a_retrain_reuses(best: Path) -> None:
    from controller.factory.search.best import read_best_config

    summary = {"counts": {"complete": 2, "pruned": 1}, "trials": [{"number": 0, "value": 0.5, "params": {}}]}
    entry = lineage_entry(read_best_config(best), summary)
    assert (entry["best_trial"], entry["value"], entry["counts"]) == (3, 0.8, {"complete": 2, "pruned": 1})
    assert reuse_overrides({"search": entry}, "m:3") == {"search": {"reuse_params": PARAMS, "reuse_from": "m:3"}}
    assert reuse_overrides({}, "m:3") == {}  # no recorded search: the retrain searches again


def test_a_reused_configuration_runs_no_trial(tmp_path: Path) -> None:
    """A drift retrain with ``on_retrain: reuse``: the search step writes the parent's best configuration."""
    import json

    from controller.factory.stage import StageContext, get_stage

    stage = get_stage("search")
    config = stage.parse_config(
        {
            "search": {"space": {"learning_rate": [0.01, 0.02]}, "reuse_params": {"learning_rate": 0.02}},
            "data": "/d/train.jsonl",
            "validation": "/d/val.jsonl",
            "student": {"model": "/m"},
            "build": {"profile": "cpu-int4", "precision": "int4"},
        }
    )
    ctx = StageContext(work_dir=tmp_path, inputs={}, extras={"db_url": f"sqlite:///{tmp_path}/controller.db"})
    result = stage.run(config, ctx)
    doc = json.loads(result.outputs["best_config"].read_text())
    assert doc["stages"]["student"] == {"learning_rate": 0.02}
    assert result.metrics["trials"] == [] and not (tmp_path / "search.db").exists()
