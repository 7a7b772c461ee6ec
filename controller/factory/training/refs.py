"""How training stages name their inputs: a path, or the name of an earlier stage's output.

``"train"``, ``"distill-data.dataset"`` -> ``ctx.inputs``; ``"/data/train.jsonl"`` or an existing relative path
-> that path. Validation checks what can be checked before any work: paths that must exist, datasets' fields,
model folders, and whether the machine has the device a config asks for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from controller.factory.modeling import check_model_folder
from controller.factory.stage import StageContext
from controller.factory.tasks.datasets import check_jsonl
from shared.errors import RecipeError, UnsupportedOnThisMachine


def looks_like_path(ref: str) -> bool:
    return os.path.isabs(ref) or ref.startswith(("./", "../", "~")) or ref.endswith((".jsonl", ".json"))


def resolve_ref(ctx: StageContext, ref: str) -> Path:
    """An earlier output by name, else a path (absolute, or relative to the working directory)."""
    if ref in ctx.inputs:
        return ctx.inputs[ref]
    path = Path(ref).expanduser()
    if path.is_absolute() or looks_like_path(ref) or path.exists():
        return path.resolve()
    return ctx.input(ref)  # raises NotFound listing the outputs that exist


def static_path(ref: str | None) -> Path | None:
    """The path ``ref`` names when it can be known at validation time (None for an earlier stage's output)."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    if path.is_absolute() or looks_like_path(ref):
        return path
    return None


def check_dataset_ref(ref: str | None, field: str, source: str, require_response: bool = True) -> None:
    path = static_path(ref)
    if path is None:
        return
    if not path.exists():
        raise RecipeError(source, field, f"dataset '{path}' does not exist")
    check_jsonl(path, require_response)  # DatasetError names file, line and field


def check_model_ref(ref: str | None, field: str, source: str) -> None:
    path = static_path(ref)
    if path is None:
        return
    if not path.exists():
        raise RecipeError(source, field, f"model folder '{path}' does not exist")
    check_model_folder(path)


def check_tokenizer_ref(ref: str | None, field: str, source: str) -> None:
    path = static_path(ref)
    if path is None:
        return
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise RecipeError(source, field, f"'{path}' holds no tokenizer (tokenizer.json / tokenizer_config.json)")


def check_device(device: str, field: str, source: str) -> None:
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedOnThisMachine(
            f"{source}: field '{field}' asks for device 'cuda' but this machine has no CUDA GPU; "
            "use device 'auto' or 'cpu', or run the job on a GPU controller"
        )


def source_of(ctx_extras: dict[str, Any]) -> str:
    return str(ctx_extras.get("recipe_source", "recipe"))
