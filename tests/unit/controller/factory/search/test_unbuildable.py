"""A trial whose student shape onnxruntime cannot build is infeasible before any training."""

from __future__ import annotations

from controller.factory.search.trial import TrialJob, _unbuildable, run_trial


def _job(init: dict) -> TrialJob:
    return TrialJob("", "s", 0, 0, {}, {"init": init}, None, {}, {}, {}, work_dir="/nonexistent/never-made")


def test_head_size_must_be_a_multiple_of_16() -> None:
    assert _unbuildable(_job({"hidden_size": 128, "num_heads": 4})) == {}  # head size 32
    assert _unbuildable(_job({"hidden_size": 96, "num_heads": 4})) == {"head_size_multiple_of_16": 8.0}  # 24
    assert _unbuildable(_job({"hidden_size": 32})) == {"head_size_multiple_of_16": 8.0}  # default 4 heads: 8
    assert _unbuildable(TrialJob("", "s", 0, 0, {}, None, None, {}, {}, {}, base_model="/m")) == {}


def test_such_a_trial_is_infeasible_without_training() -> None:
    result = run_trial(_job({"hidden_size": 96, "num_heads": 4}))
    assert result["state"] == "complete" and result["feasible"] is False
    assert result["violations"] == {"head_size_multiple_of_16": 8.0} and result["step"] == 0
