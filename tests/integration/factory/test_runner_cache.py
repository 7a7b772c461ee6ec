"""The pipeline runner on real stages: the model builder, onnxruntime-genai evaluation, the registry.

Cache reuse: a second run of an unchanged pipeline runs no stage; changing one profile reruns only that
profile's steps. A failing stage leaves the registry unchanged; cancel stops between steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.factory.cache import StageCache
from controller.factory.pipeline import PipelineStep
from controller.factory.runner import PipelineRunner
from controller.registry.registry import Registry
from shared.errors import Cancelled, StageError


def _pipeline(hf: Path, test: Path, int4_block: int = 32, publish: bool = False) -> list[PipelineStep]:
    evaluate = {
        "data": str(test),
        "task": "smart-building",
        "limit": 4,
        "max_new_tokens": 16,
        "warmup": 1,
        "golden": 2,
        "threads": 1,
    }
    steps = [
        PipelineStep("convert", "convert", {"model": str(hf)}),
        PipelineStep(
            "quantize@cpu-int4",
            "quantize",
            {"profile": "cpu-int4", "precision": "int4", "int4_block_size": int4_block, "model": str(hf)},
            needs=["convert"],
            profile="cpu-int4",
        ),
        PipelineStep(
            "quantize@cpu-fp32",
            "quantize",
            {"profile": "cpu-fp32", "precision": "fp32", "model": str(hf)},
            needs=["convert"],
            profile="cpu-fp32",
        ),
        PipelineStep(
            "evaluate@cpu-int4",
            "evaluate",
            {**evaluate, "profile": "cpu-int4", "precision": "int4"},
            needs=["quantize@cpu-int4"],
            profile="cpu-int4",
        ),
        PipelineStep(
            "evaluate@cpu-fp32",
            "evaluate",
            {**evaluate, "profile": "cpu-fp32", "precision": "fp32"},
            needs=["quantize@cpu-fp32"],
            profile="cpu-fp32",
        ),
    ]
    if publish:
        variants = [
            {
                "profile": p,
                "precision": p.split("-")[1],
                "model": f"quantize@{p}.model",
                "evaluation": f"evaluate@{p}.metrics",
                "golden": f"evaluate@{p}.golden",
            }
            for p in ("cpu-int4", "cpu-fp32")
        ]
        steps.append(
            PipelineStep(
                "publish",
                "publish",
                {"name": "tiny", "variants": variants, "lineage": {"teacher": "none"}},
                needs=[s.id for s in steps],
            )
        )
    return steps


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the module: later tests reuse what earlier ones built."""
    return tmp_path_factory.mktemp("factory-cache")


def _runner(root: Path, run: str, extras: dict[str, Any] | None = None, **kw: Any) -> PipelineRunner:
    return PipelineRunner(
        root / "jobs" / run,
        StageCache(root / "cache" / "stages"),
        shared_cache_dir=root / "cache",
        extras=extras or {},
        **kw,
    )


def test_cache_reuse_and_one_profile_change(cache_root: Path, tiny_hf_model: Path, task_data: dict[str, Path]) -> None:
    tmp_path = cache_root  # the first test of the module: starts from an empty cache
    progress: list[tuple[int, str, str]] = []
    first = _runner(tmp_path, "r1", on_progress=lambda i, n, s, p: progress.append((i, s.id, p.message)))
    res = first.run(_pipeline(tiny_hf_model, task_data["test"]))
    assert res.cached == [] and len(res.ran) == 5
    assert {sid for _, sid, m in progress if m == "started"} == set(res.ran)
    int4 = res.outcomes["quantize@cpu-int4"]
    fp32 = res.outcomes["quantize@cpu-fp32"]
    assert int4.metrics["build_path"] == "builder" and fp32.metrics["build_path"] == "reference"
    assert int4.metrics["size_bytes"] < fp32.metrics["size_bytes"] / 2
    ev = res.outcomes["evaluate@cpu-int4"].metrics
    assert ev["n"] == 4 and 0 <= ev["accuracy"] <= 1 and ev["tokens_per_s"] > 0 and ev["footprint_bytes"] > 0
    assert ev["kv_cache_bytes"] == ev["kv_bytes_per_token"] * ev["context_length"] > 0
    golden = json.loads(res.outcomes["evaluate@cpu-int4"].outputs["golden"].read_text())
    assert len(golden) == 2 and all("expected" in g and g["prompt"] for g in golden)
    # outputs live in the shared cache, not in the job's work dir
    assert str(int4.outputs["model"]).startswith(str(tmp_path / "cache" / "stages"))

    second = _runner(tmp_path, "r2").run(_pipeline(tiny_hf_model, task_data["test"]))
    assert second.ran == [] and len(second.cached) == 5
    assert second.outcomes["evaluate@cpu-int4"].metrics["accuracy"] == ev["accuracy"]

    third = _runner(tmp_path, "r3").run(_pipeline(tiny_hf_model, task_data["test"], int4_block=64))
    assert sorted(third.ran) == ["evaluate@cpu-int4", "quantize@cpu-int4"]
    assert sorted(third.cached) == ["convert", "evaluate@cpu-fp32", "quantize@cpu-fp32"]


def test_failed_stage_leaves_registry_unchanged(
    cache_root: Path, tiny_hf_model: Path, task_data: dict[str, Path], registry: Registry
) -> None:
    tmp_path = cache_root
    ok = _runner(tmp_path, "ok", extras={"registry": registry, "job_id": "j-ok"})
    res = ok.run(_pipeline(tiny_hf_model, task_data["test"], publish=True))
    assert res.outcomes["publish"].metrics["version"] == "1"
    info = registry.get_model("tiny", "1")
    assert info.profiles == ["cpu-fp32", "cpu-int4"] and info.job_id == "j-ok"
    manifest = registry.verify_variant(registry.variant("tiny", "1", "cpu-int4"))
    assert manifest.metrics["accuracy"] >= 0 and len(manifest.golden) == 2

    steps = _pipeline(tiny_hf_model, task_data["test"], int4_block=64, publish=True)
    steps[1].config["extra_options"] = {"block_size": "not-a-number"}  # the builder fails on it
    bad = _runner(tmp_path, "bad", extras={"registry": registry, "job_id": "j-bad"})
    with pytest.raises(StageError, match=r"quantize@cpu-int4.*model builder exited with code"):
        bad.run(steps)
    assert [m.version for m in registry.list_models("tiny")] == ["1"]

    cancelled = _runner(
        tmp_path,
        "cancel",
        extras={"registry": registry},
        is_cancelled=lambda: (tmp_path / "jobs" / "cancel" / "steps.json").exists(),
    )
    with pytest.raises(Cancelled):
        cancelled.run(_pipeline(tiny_hf_model, task_data["test"], int4_block=128, publish=True))
    assert [m.version for m in registry.list_models("tiny")] == ["1"]
