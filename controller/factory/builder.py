"""The onnxruntime-genai model builder, run in a child process (its memory goes away with it).

``python -m onnxruntime_genai.models.builder -i HF -o OUT -p PRECISION -e EP -c CACHE --extra_options k=v``;
the outputs are checked (the builder can exit 0 without a model) and a failure carries its output's tail.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.factory.subproc import run_tool
from shared.errors import RecipeError, StageError
from shared.profiles import runtime_names

log = logging.getLogger(__name__)

# Precision + execution provider pairs the 0.18 builder accepts (from its own list).
BUILDER_COMBOS = {
    ("fp32", "cpu"),
    ("fp32", "cuda"),
    ("fp16", "cuda"),
    ("fp16", "dml"),
    ("fp16", "NvTensorRtRtx"),
    ("bf16", "cuda"),
    ("bf16", "NvTensorRtRtx"),
    ("int8", "cpu"),
    ("int8", "cuda"),
    ("int8", "webgpu"),
    ("int4", "cpu"),
    ("int4", "cuda"),
    ("int4", "dml"),
    ("int4", "webgpu"),
}

# Files every onnxruntime-genai model folder must hold besides the ONNX model itself.
REQUIRED_FILES = ("genai_config.json", "tokenizer.json")


# What a variant is built as for each runtime (a profile's ``runtime``: the names of the installed runtime
# backends, entry points 'slmops.runtimes', see shared.profiles.runtime_names). They all load the onnxruntime-genai
# folder this module builds; Foundry Local cannot apply runtime LoRA adapters (agent/runtime/foundry_local.py), so
# a base + .onnx_adapter variant is refused for it. A runtime not listed here (a third-party backend) gets
# DEFAULT_RUNTIME_TARGET: the same folder, no runtime adapters.
RUNTIME_TARGETS: dict[str, dict[str, Any]] = {
    "ort-genai": {"format": "ort-genai", "runtime_adapters": True},
    "foundry-local": {"format": "ort-genai", "runtime_adapters": False},
}
DEFAULT_RUNTIME_TARGET: dict[str, Any] = {"format": "ort-genai", "runtime_adapters": False}


def check_runtime_target(runtime: str, field: str, source: str, runtime_adapter: bool = False) -> dict[str, Any]:
    """The build target for ``runtime``; RecipeError when unknown or when it cannot load a runtime adapter."""
    known = runtime_names()
    if runtime not in known:
        raise RecipeError(source, field, f"unknown runtime '{runtime}' (known: {', '.join(known)})")
    target = RUNTIME_TARGETS.get(runtime, DEFAULT_RUNTIME_TARGET)
    if runtime_adapter and not target["runtime_adapters"]:
        raise RecipeError(
            source,
            field,
            f"runtime '{runtime}' cannot apply a runtime LoRA adapter (finetune.merge: false); "
            "merge the adapter (merge: true) or target an ort-genai profile",
        )
    return target


def builder_supports(precision: str, execution_provider: str) -> bool:
    return (precision, execution_provider) in BUILDER_COMBOS


def supported_combos_text() -> str:
    return ", ".join(f"{p}/{e}" for p, e in sorted(BUILDER_COMBOS))


# List-valued builder options and their separators (node names contain '/', op types are '/'-separated).
_LIST_SEPARATORS = {"nodes_to_exclude": ","}


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return _LIST_SEPARATORS.get(key, "/").join(str(v) for v in value)
    return str(value)


def builder_command(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    execution_provider: str,
    cache_dir: Path,
    extra_options: dict[str, Any] | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        precision,
        "-e",
        execution_provider,
        "-c",
        str(cache_dir),
    ]
    if extra_options:
        cmd.append("--extra_options")
        cmd.extend(f"{k}={_fmt(k, v)}" for k, v in sorted(extra_options.items()))
    return cmd


def check_og_folder(folder: Path, what: str = "model") -> dict[str, Any]:
    """Raise StageError unless ``folder`` holds a loadable-looking onnxruntime-genai model; return its config."""
    folder = Path(folder)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise StageError(what, f"{folder} has no {', '.join(missing)}: not an onnxruntime-genai model folder")
    config = json.loads((folder / "genai_config.json").read_text())
    filename = config.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
    onnx_path = folder / filename
    if not onnx_path.is_file() or onnx_path.stat().st_size == 0:
        raise StageError(what, f"{folder} has no decoder model file '{filename}' (named in genai_config.json)")
    return config


def build_og_model(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    execution_provider: str = "cpu",
    extra_options: dict[str, Any] | None = None,
    *,
    log_path: Path | None = None,
    timeout_s: float = 0,
    is_cancelled: Callable[[], bool] = lambda: False,
    stage: str = "convert",
) -> Path:
    """Build an onnxruntime-genai model folder from a Hugging Face folder; returns ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cache_dir = out_dir.parent / f".{out_dir.name}-builder-cache"
    log_path = log_path or out_dir.parent / f"{out_dir.name}-builder.log"
    cmd = builder_command(hf_dir, out_dir, precision, execution_provider, cache_dir, extra_options)
    log.info("building %s/%s model from %s", precision, execution_provider, hf_dir)
    try:
        run = run_tool(cmd, log_path, timeout_s=timeout_s, is_cancelled=is_cancelled)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if run.returncode != 0:
        raise StageError(
            stage,
            f"the onnxruntime-genai model builder exited with code {run.returncode} building "
            f"{precision}/{execution_provider} from {hf_dir}; its output ended with:\n{run.tail()}",
        )
    try:
        check_og_folder(out_dir, stage)
    except StageError as exc:
        raise StageError(stage, f"the model builder exited 0 but {exc.message}; its output:\n{run.tail()}") from exc
    log.info("built %s/%s model in %.1f s -> %s", precision, execution_provider, run.seconds, out_dir)
    return out_dir


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
