"""Bundled tasks (data generator + exact scorer) by name, and JSONL dataset helpers."""

from __future__ import annotations

from pathlib import Path

from controller.factory.tasks import smart_building as _smart_building  # noqa: F401  (registers the task)
from controller.factory.tasks.base import SPLITS, VARIANTS, Task, get_task, register_task, task_names
from controller.factory.tasks.datasets import (
    DatasetError,
    Example,
    check_jsonl,
    read_jsonl,
    write_jsonl,
)

__all__ = [
    "SPLITS",
    "VARIANTS",
    "DatasetError",
    "Example",
    "Task",
    "check_jsonl",
    "get_task",
    "read_jsonl",
    "register_task",
    "task_names",
    "write_jsonl",
    "write_task_splits",
]

DEFAULT_SIZES = {"train": 2000, "validation": 200, "test": 200}


def write_task_splits(
    task_name: str,
    out_dir: Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    variant: str = "base",
) -> dict[str, Path]:
    """Generate each split of a task to ``out_dir/<variant>-<split>.jsonl``; returns split -> path."""
    task = get_task(task_name)
    out: dict[str, Path] = {}
    for split, n in (sizes or DEFAULT_SIZES).items():
        out[split] = write_jsonl(Path(out_dir) / f"{variant}-{split}.jsonl", task.generate(split, n, seed, variant))
    return out
