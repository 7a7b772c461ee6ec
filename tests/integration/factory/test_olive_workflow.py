"""A profile's own Olive workflow: a real ``olive run`` (offline, CPU) turned into an onnxruntime-genai
variant; a failing workflow fails the stage loudly (Olive itself exits 0 when a pass fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.factory.cache import StageCache
from controller.factory.evaluation import run_evaluation
from controller.factory.pipeline import PipelineStep
from controller.factory.runner import PipelineRunner
from shared.errors import StageError

RTN = {"passes": {"rtn": {"type": "OnnxBlockWiseRtnQuantization", "bits": 4, "block_size": 32, "accuracy_level": 4}}}


def _steps(hf: Path, workflow: dict) -> list[PipelineStep]:
    return [
        PipelineStep("convert", "convert", {"model": str(hf)}),
        PipelineStep(
            "quantize@npu-int4",
            "quantize",
            {
                "profile": "npu-int4",
                "precision": "int4",
                "execution_provider": "qnn",
                "model": str(hf),
                "olive_workflow": workflow,
            },
            needs=["convert"],
            profile="npu-int4",
        ),
    ]


@pytest.mark.slow
def test_olive_workflow_builds_a_variant_and_failures_are_loud(
    tmp_path: Path, tiny_hf_model: Path, task_data: dict[str, Path]
) -> None:
    runner = PipelineRunner(tmp_path / "job", StageCache(tmp_path / "cache"))
    res = runner.run(_steps(tiny_hf_model, RTN))
    variant = res.outcomes["quantize@npu-int4"]
    assert variant.metrics["build_path"] == "olive"
    assert variant.metrics["size_bytes"] < res.outcomes["convert"].metrics["size_bytes"] / 2
    # the RTN pass renamed the logits output; slmops renamed it back, so onnxruntime-genai runs the model
    ev = run_evaluation(variant.outputs["model"], task_data["test"], tmp_path / "eval", limit=2, max_new_tokens=8)
    assert ev.metrics["n"] == 2 and ev.metrics["tokens_per_s"] > 0

    broken = {"passes": {"rtn": {"type": "OnnxBlockWiseRtnQuantization", "bits": 4, "block_size": 7}}}
    with pytest.raises(StageError, match=r"quantize@npu-int4.*Olive workflow"):
        PipelineRunner(tmp_path / "job2", StageCache(tmp_path / "cache")).run(_steps(tiny_hf_model, broken))
