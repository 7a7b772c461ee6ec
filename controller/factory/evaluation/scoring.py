"""Scorers for evaluation: a registered task's own ``score`` or a generic exact-match + JSON check."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable

Scorer = Callable[[str, str], dict[str, bool]]


def generic_score(prediction: str, reference: str) -> dict[str, bool]:
    """Exact match after trimming whitespace; JSON validity of the prediction."""
    try:
        json.loads(prediction)
        valid = True
    except ValueError:
        valid = False
    return {"exact": prediction.strip() == reference.strip(), "valid_json": valid}


def _import_tasks() -> None:
    from controller.factory import tasks

    for mod in pkgutil.iter_modules(tasks.__path__):
        importlib.import_module(f"{tasks.__name__}.{mod.name}")


def load_scorer(task: str) -> Scorer:
    """The task's scorer by name; ``""`` gives :func:`generic_score`. Unknown names raise NotFound."""
    if not task:
        return generic_score
    from controller.factory.tasks.base import get_task, task_names

    if task not in task_names():
        _import_tasks()
    return get_task(task).score


def known_tasks() -> list[str]:
    from controller.factory.tasks.base import task_names

    _import_tasks()
    return task_names()


def score_pairs(task: str, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Exact-match and valid-JSON rates of ``(prediction, reference)`` pairs by the task's scorer (``n`` pairs;
    the rates are 0.0 for none)."""
    score = load_scorer(task)
    results = [score(p, r) for p, r in pairs]
    n = len(results)
    return {
        "n": n,
        "exact_match": sum(bool(r["exact"]) for r in results) / n if n else 0.0,
        "valid_json": sum(bool(r["valid_json"]) for r in results) / n if n else 0.0,
    }
