"""Runtime-switchable LoRA for onnxruntime-genai: a base model that takes the LoRA weights as optional
inputs, plus the weights in an ``.onnx_adapter`` file (onnxruntime ``AdapterFormat``) that ``og.Adapters``
loads and a generator activates by name.

The model builder bakes a peft adapter in as extra MatMuls (``--extra_options adapter_path=DIR``); here
each ``*.lora_A.*``/``*.lora_B.*`` initializer becomes a graph input whose rank dimension is dynamic
(``lora_r``), with an empty default (rank 0), so the model without an active adapter is the base model.
For int4/int8 builds the LoRA MatMuls are excluded from quantization (their weights must stay float).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shared.errors import StageError

log = logging.getLogger(__name__)

# peft target module -> the model builder's node path inside a decoder layer
_MODULE_PATHS = {
    "q_proj": "attn/q_proj",
    "k_proj": "attn/k_proj",
    "v_proj": "attn/v_proj",
    "o_proj": "attn/o_proj",
    "qkv_proj": "attn/qkv_proj",
    "gate_proj": "mlp/gate_proj",
    "up_proj": "mlp/up_proj",
    "down_proj": "mlp/down_proj",
    "gate_up_proj": "mlp/gate_up_proj",
}


def lora_node_names(hf_dir: Path, adapter_dir: Path) -> list[str]:
    """Builder node names of the adapter's LoRA MatMuls (to keep them out of weight quantization)."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    adapter = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    targets = adapter.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    unknown = [t for t in targets if t not in _MODULE_PATHS]
    if unknown:
        raise StageError(
            "export-adapter",
            f"LoRA target modules {unknown} are not known to slmops' exporter "
            f"(known: {', '.join(_MODULE_PATHS)}); build the adapter at fp32/fp16 instead",
        )
    layers = int(config["num_hidden_layers"])
    return [
        f"/model/layers.{i}/{_MODULE_PATHS[t]}/lora_{ab}/MatMul" for i in range(layers) for t in targets for ab in "AB"
    ]


def make_lora_inputs(folder: Path) -> dict[str, Any]:
    """Turn the LoRA initializers of the model in ``folder`` into optional inputs; return their values."""
    import numpy as np
    import onnx
    from onnx import external_data_helper, helper, numpy_helper

    folder = Path(folder)
    genai = json.loads((folder / "genai_config.json").read_text())
    path = folder / genai["model"]["decoder"].get("filename", "model.onnx")
    model = onnx.load(str(path), load_external_data=False)
    weights: dict[str, Any] = {}
    for init in model.graph.initializer:
        if ".lora_A." not in init.name and ".lora_B." not in init.name:
            continue
        if not init.name.endswith(".weight"):
            raise StageError(
                "export-adapter",
                f"LoRA weight '{init.name}' is quantized; runtime adapters need "
                "float LoRA weights (the exporter excludes them from quantization; check the build)",
            )
        if external_data_helper.uses_external_data(init):
            external_data_helper.load_external_data_for_tensor(init, str(folder))
        value = numpy_helper.to_array(init)
        weights[init.name] = value
        rank_dim = 1 if ".lora_A." in init.name else 0
        shape = list(value.shape)
        shape[rank_dim] = 0
        init.CopyFrom(numpy_helper.from_array(np.zeros(shape, dtype=value.dtype), init.name))
        dims: list[Any] = list(value.shape)
        dims[rank_dim] = "lora_r"
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, dims))
    if not weights:
        raise StageError(
            "export-adapter", f"the model in {folder} has no LoRA weights: was it built with adapter_path?"
        )
    onnx.save(model, str(path))
    log.info("made %d LoRA weights optional inputs of %s", len(weights), path)
    return weights


def write_adapter(weights: dict[str, Any], path: Path) -> Path:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in weights.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))
    return path
