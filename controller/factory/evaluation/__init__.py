"""Evaluation of onnxruntime-genai models in a child process per model (so peak RSS is per model)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.factory.subproc import run_tool
from shared.errors import StageError

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    golden: list[dict[str, str]] = field(default_factory=list)
    predictions_path: Path | None = None


def run_evaluation(
    model_dir: Path,
    data_path: Path,
    out_dir: Path,
    *,
    task: str = "",
    limit: int = 0,
    max_new_tokens: int = 64,
    threads: int = 0,
    provider: str = "cpu",
    golden: int = 5,
    warmup: int = 2,
    timeout_s: float = 0,
    is_cancelled: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int, int], None] | None = None,
    stage: str = "evaluate",
    guided: bool = True,
    output_schema: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate one model folder on a JSONL test set; writes spec, log, result and predictions to ``out_dir``.

    With an output schema (``output_schema``, else the task's) and ``guided``, the metrics also hold
    ``schema_validity`` and the guided pass's ``guided_accuracy``, ``guided_json_validity``,
    ``guided_schema_validity`` and ``guided_latency_ms_mean`` (evaluation/guided.py)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "task": task,
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "threads": threads,
        "provider": provider,
        "golden": golden,
        "warmup": warmup,
        "guided": guided,
        "output_schema": output_schema,
    }
    spec_path, result_path, progress_path = out_dir / "spec.json", out_dir / "result.json", out_dir / "progress.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    result_path.unlink(missing_ok=True)
    seen = [-1]

    def _relay() -> None:
        if on_progress is None or not progress_path.exists():
            return
        try:
            data = json.loads(progress_path.read_text())
        except ValueError:
            return
        if data["done"] != seen[0]:
            seen[0] = data["done"]
            on_progress(int(data["done"]), int(data["total"]))

    cmd = [sys.executable, "-m", "controller.factory.evaluation.worker", str(spec_path), str(result_path)]
    run = run_tool(cmd, out_dir / "evaluate.log", timeout_s=timeout_s, is_cancelled=is_cancelled, on_poll=_relay)
    if run.returncode != 0 or not result_path.exists():
        raise StageError(
            stage,
            f"evaluating {model_dir} failed (exit code {run.returncode}); its output ended with:\n{run.tail()}",
        )
    result = json.loads(result_path.read_text())
    predictions = out_dir / "predictions.jsonl"
    with open(predictions, "w", encoding="utf-8") as fh:
        for row in result["predictions"]:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    log.info(
        "evaluated %s: accuracy %.3f, latency %.1f ms, %.0f tok/s",
        model_dir,
        result["metrics"]["accuracy"],
        result["metrics"]["latency_ms_mean"],
        result["metrics"]["tokens_per_s"],
    )
    return EvalResult(result["metrics"], result["golden"], predictions)
