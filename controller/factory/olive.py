"""Run a device profile's own Olive workflow (``olive run --config``) and turn its output into an
onnxruntime-genai model folder.

A profile's ``olive_workflow`` is an Olive run config fragment: ``passes`` (required) plus any other Olive
keys (systems, host, target, ...). One slmops key is read and removed: ``input`` = ``onnx`` (default: the
fp32 onnxruntime-genai model the ``convert`` stage built, as an ``ONNXModel``) or ``hf`` (the trained
Hugging Face folder, as an ``HfModel``). slmops fills ``input_model``, ``output_dir`` and ``cache_dir``.

Olive exits 0 even when a pass fails, so the output is checked. When the output has no
``genai_config.json`` (ONNX-to-ONNX passes such as ``OnnxBlockWiseRtnQuantization``), the reference
folder's config and tokenizer files are copied next to the new model, and graph inputs/outputs a pass
renamed (e.g. ``logits`` -> ``logits_Q4``) are renamed back so the runtime finds them.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.factory.builder import check_og_folder
from controller.factory.subproc import run_tool
from shared.errors import StageError

log = logging.getLogger(__name__)

STAGE = "quantize"


def olive_config(workflow: dict[str, Any], reference_og: Path, hf_dir: Path | None, out_dir: Path) -> dict[str, Any]:
    """The full ``olive run`` config for ``workflow`` (see module doc)."""
    config = copy.deepcopy(workflow)
    source = config.pop("input", "onnx")
    if "passes" not in config or not config["passes"]:
        raise StageError(STAGE, "the profile's olive_workflow has no 'passes'")
    if "input_model" not in config:
        if source == "hf":
            if hf_dir is None:
                raise StageError(STAGE, "olive_workflow input 'hf' needs a Hugging Face model folder")
            config["input_model"] = {"type": "HfModel", "model_path": str(hf_dir)}
        elif source == "onnx":
            genai = json.loads((Path(reference_og) / "genai_config.json").read_text())
            filename = genai["model"]["decoder"].get("filename", "model.onnx")
            config["input_model"] = {"type": "ONNXModel", "model_path": str(reference_og), "onnx_file_name": filename}
        else:
            raise StageError(STAGE, f"olive_workflow input must be 'onnx' or 'hf', not '{source}'")
    config.setdefault(
        "systems",
        {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
    )
    if "local_system" in config["systems"]:
        config.setdefault("host", "local_system")
        config.setdefault("target", "local_system")
    config["output_dir"] = str(Path(out_dir) / "olive-output")
    config["cache_dir"] = str(Path(out_dir) / "olive-cache")
    config.setdefault("log_severity_level", 1)
    return config


def run_olive_workflow(
    workflow: dict[str, Any],
    reference_og: Path,
    hf_dir: Path | None,
    out_dir: Path,
    *,
    is_cancelled: Callable[[], bool] = lambda: False,
    timeout_s: float = 0,
) -> Path:
    """Run the workflow; returns ``out_dir/model`` holding an onnxruntime-genai model folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = olive_config(workflow, reference_og, hf_dir, out_dir)
    config_path = out_dir / "olive-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    cmd = [sys.executable, "-m", "olive", "run", "--config", str(config_path)]
    run = run_tool(cmd, out_dir / "olive.log", is_cancelled=is_cancelled, timeout_s=timeout_s)
    produced = Path(config["output_dir"])
    onnx_files = sorted(produced.rglob("*.onnx")) if produced.is_dir() else []
    if run.returncode != 0 or not onnx_files:
        why = f"exited with code {run.returncode}" if run.returncode else "exited 0 but produced no ONNX model"
        raise StageError(
            STAGE,
            f"the Olive workflow {why} (passes: {', '.join(config['passes'])}); its output ended with:\n{run.tail()}",
        )
    final = out_dir / "model"
    if final.exists():
        shutil.rmtree(final)
    genai_dirs = [p.parent for p in produced.rglob("genai_config.json")]
    if genai_dirs:
        shutil.copytree(genai_dirs[0], final)
    else:
        if len(onnx_files) != 1:
            raise StageError(
                STAGE,
                f"the Olive workflow produced {len(onnx_files)} ONNX files "
                f"({', '.join(p.name for p in onnx_files)}); slmops expects one decoder model",
            )
        _assemble(onnx_files[0], Path(reference_og), final)
    shutil.rmtree(config["cache_dir"], ignore_errors=True)
    check_og_folder(final, STAGE)
    log.info("Olive workflow built %s in %.1f s", final, run.seconds)
    return final


def _assemble(onnx_file: Path, reference_og: Path, final: Path) -> None:
    """Reference folder's config/tokenizer files + the new ONNX model (and its external data files)."""
    import onnx

    genai = json.loads((reference_og / "genai_config.json").read_text())
    ref_name = genai["model"]["decoder"].get("filename", "model.onnx")
    ref_model = onnx.load(str(reference_og / ref_name), load_external_data=False)
    skip = {ref_name, *_external_files(ref_model)}
    final.mkdir(parents=True)
    for item in reference_og.iterdir():
        if item.is_file() and item.name not in skip:
            shutil.copy2(item, final / item.name)
    model = onnx.load(str(onnx_file), load_external_data=False)
    for data_name in _external_files(model):
        shutil.copy2(onnx_file.parent / data_name, final / data_name)
    renamed = _restore_io_names(model, ref_model)
    if renamed:
        log.info("renamed graph inputs/outputs back to what the runtime expects: %s", renamed)
        onnx.save(model, str(final / onnx_file.name))
    else:
        shutil.copy2(onnx_file, final / onnx_file.name)
    genai["model"]["decoder"]["filename"] = onnx_file.name
    (final / "genai_config.json").write_text(json.dumps(genai, indent=4))


def _external_files(model: Any) -> set[str]:
    names = set()
    for init in model.graph.initializer:
        for kv in init.external_data:
            if kv.key == "location":
                names.add(kv.value)
    return names


def _restore_io_names(model: Any, reference: Any) -> dict[str, str]:
    """Rename graph inputs/outputs a pass suffixed (``logits_Q4``) back to the reference names."""
    renames: dict[str, str] = {}
    for kind in ("input", "output"):
        new_names = [v.name for v in getattr(model.graph, kind)]
        for ref in (v.name for v in getattr(reference.graph, kind)):
            if ref in new_names:
                continue
            candidates = [n for n in new_names if n.startswith(ref + "_") and n not in renames]
            if len(candidates) == 1:
                renames[candidates[0]] = ref
    if not renames:
        return renames
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name in renames:
            value.name = renames[value.name]
    for node in graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    return renames
