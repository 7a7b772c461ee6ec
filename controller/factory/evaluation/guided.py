"""Evaluation with and without guided decoding (issue #16): how often the unguided model's answers are valid
against the task's output schema, and the accuracy and validity when decoding is constrained by it."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

import jsonschema

from shared.guided_json import json_schema_guidance


def schema_for(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The spec's ``output_schema``, else its task's; None with ``guided: false`` or when there is none."""
    if spec.get("guided") is False:
        return None
    if spec.get("output_schema"):
        return dict(spec["output_schema"])
    if not spec.get("task"):
        return None
    from controller.factory.evaluation.scoring import load_scorer
    from controller.factory.tasks.base import get_task

    load_scorer(spec["task"])  # imports the task modules
    return get_task(spec["task"]).output_schema()


def schema_valid(text: str, validator: Any) -> bool:
    try:
        return validator.is_valid(json.loads(text))
    except ValueError:
        return False


def guided_metrics(
    gen: Any,
    examples: list[Any],
    rows: list[dict[str, Any]],
    schema: dict[str, Any],
    score: Callable[[str, str], dict[str, bool]],
    max_new: int,
) -> dict[str, float]:
    """Schema validity of the unguided ``rows``, then a guided pass over ``examples``."""
    validator = jsonschema.Draft202012Validator(schema)
    n = len(rows)
    out = {"schema_validity": sum(schema_valid(r["text"], validator) for r in rows) / n}
    guidance = json_schema_guidance(schema)
    exact = valid_json = valid = 0
    latency = []
    for ex in examples:
        res = gen.generate(ex.messages, max_new, guidance)
        s = score(res["text"], ex.response or "")
        exact += bool(s["exact"])
        valid_json += bool(s["valid_json"])
        valid += schema_valid(res["text"], validator)
        latency.append(res["latency_s"] * 1000)
    out.update(
        guided_accuracy=exact / n,
        guided_json_validity=valid_json / n,
        guided_schema_validity=valid / n,
        guided_latency_ms_mean=statistics.fmean(latency),
    )
    return out
