"""The evaluation worker reports accuracy and valid-output rate with and without guided decoding."""

from __future__ import annotations

from controller.factory.evaluation.worker import evaluate


def test_guided_pass_makes_every_answer_schema_valid(long_context_model_dir, task_data) -> None:
    spec = {
        "model_dir": str(long_context_model_dir),
        "data_path": str(task_data["test"]),
        "task": "smart-building",
        "limit": 6,
        "max_new_tokens": 120,
        "warmup": 0,
        "golden": 1,
    }
    metrics = evaluate(spec)["metrics"]
    # a random-init model does not write the task's JSON on its own; guided by the task's schema it always does
    assert metrics["schema_validity"] == 0.0
    assert metrics["guided_schema_validity"] == 1.0 and metrics["guided_json_validity"] == 1.0
    assert 0.0 <= metrics["guided_accuracy"] <= 1.0 and metrics["guided_latency_ms_mean"] > 0
    off = evaluate({**spec, "guided": False})["metrics"]
    assert "guided_accuracy" not in off and off["accuracy"] == metrics["accuracy"]
