"""A task: a deterministic data generator plus an exact scorer, registered by name so recipes can name it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

from shared.errors import NotFound

SPLITS = ("train", "validation", "test")
VARIANTS = ("base", "shifted")


class Task(ABC):
    """Subclass, set ``name``, implement ``generate`` and ``score``; decorate with :func:`register_task`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def generate(self, split: str, n: int, seed: int = 0, variant: str = "base") -> list[dict[str, str]]:
        """``n`` records ``{"prompt", "response"}``; the same arguments always give the same records."""

    @abstractmethod
    def score(self, prediction: str, reference: str) -> dict[str, bool]:
        """``{"exact": bool, "valid_json": bool}`` for one answer."""

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema every answer of this task follows (guided decoding, issue #16); None if free text."""
        return None

    def score_many(self, predictions: Iterable[str], references: Iterable[str]) -> dict[str, Any]:
        """Aggregate scores: ``{"n", "exact_match", "valid_json"}`` (fractions 0..1)."""
        preds, refs = list(predictions), list(references)
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
        scores = [self.score(p, r) for p, r in zip(preds, refs, strict=True)]
        n = len(scores)
        return {
            "n": n,
            "exact_match": sum(s["exact"] for s in scores) / n if n else 0.0,
            "valid_json": sum(s["valid_json"] for s in scores) / n if n else 0.0,
        }


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task name '{cls.name}' registered twice")
    _TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise NotFound(f"unknown task '{name}' (known: {', '.join(sorted(_TASKS)) or 'none'})")
    return _TASKS[name]()


def task_names() -> list[str]:
    return sorted(_TASKS)


def check_split(split: str, variant: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}' (known: {', '.join(VARIANTS)})")
