"""The best trial's configuration (``best_config.json``, the ``search`` stage's output) and how the downstream
stages take it: each reads its own section and overrides its hand-set values with it.

    {"study": ..., "trial": 7, "metric": "accuracy", "value": 0.81, "params": {...},
     "stages": {"student": {"learning_rate": ..., "init": {"hidden_size": 96}},
                "finetune": {"lora_r": 8}, "quantize": {"int4_block_size": 64}},
     "profile": "cpu-int4", "reused_from": ""}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from controller.factory.search.space import apply_to_config, split_params
from shared.errors import StageError

C = TypeVar("C", bound=BaseModel)

PORT_DOC = "best_config.json of a search step: its section overrides this stage's hand-set values"


def best_config(params: dict[str, Any], train_section: str, **facts: Any) -> dict[str, Any]:
    return {**facts, "params": params, "stages": split_params(params, train_section)}


def write_best_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    return path


def read_best_config(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """The search's ``best_config.json`` at ``path`` (``data``: its content, read from the blob store)."""
    try:
        doc = json.loads(Path(path).read_bytes() if data is None else data)
    except (OSError, ValueError) as exc:
        raise StageError("search", f"cannot read the search's best configuration {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), dict):
        raise StageError("search", f"{path} is not a search best_config.json (no 'stages')")
    return doc


def apply_best(config: C, section: str, path: Path, stage: str) -> tuple[C, dict[str, Any]]:
    """``config`` with the best configuration's ``section`` applied, and the changes made (empty: none)."""
    changes = read_best_config(path)["stages"].get(section) or {}
    if not changes:
        return config, {}
    raw = apply_to_config(config.model_dump(), changes)
    try:
        return type(config).model_validate(raw), changes
    except ValidationError as exc:
        raise StageError(stage, f"the searched configuration {changes} is not valid here: {exc}") from exc


def apply_search(config: C, section: str, ctx: Any, stage: str) -> tuple[C, dict[str, Any]]:
    """For a stage's ``run``: ``config`` with its ``search`` input's section applied (unchanged without one)."""
    ref = getattr(config, "search", None)
    if not ref:
        return config, {}
    from controller.factory.training.refs import resolve_ref

    return apply_best(config, section, resolve_ref(ctx, ref), stage)


def lineage_entry(doc: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    """What a published version records about its search: the best configuration and a compact trial table
    (a drift retrain with ``on_retrain: reuse`` reads ``best_params`` back)."""
    keep = ("number", "params", "value", "state", "duration_s")
    entry: dict[str, Any] = {
        "best_params": doc.get("params", {}),
        "best_trial": doc.get("trial"),
        "metric": doc.get("metric", ""),
        "value": doc.get("value"),
        "profile": doc.get("profile", ""),
        "study": doc.get("study", ""),
    }
    if doc.get("reused_from"):
        entry["reused_from"] = doc["reused_from"]
    if summary:
        entry["counts"] = summary.get("counts", {})
        entry["trials"] = [{k: r.get(k) for k in keep} for r in summary.get("trials", [])]
    return entry
