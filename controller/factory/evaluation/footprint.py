"""A model's own memory footprint: weights bytes + KV cache bytes at a context length.

Read from an onnxruntime-genai folder: ``genai_config.json`` gives layers, KV heads and head size; the
decoder graph's ``past_key_values.*`` input type gives the KV element size. Process RSS is reported beside
it, but on tiny models the runtime's fixed floor (~30 MiB) hides the difference between models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

# onnx TensorProto element types -> bytes
_ELEM_BYTES = {1: 4, 10: 2, 16: 2, 11: 8, 3: 1, 2: 1, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1}


@dataclass
class Footprint:
    weights_bytes: int
    kv_cache_bytes: int
    footprint_bytes: int
    context_length: int
    kv_bytes_per_token: int
    size_bytes: int

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _model_files(folder: Path, filename: str) -> list[Path]:
    import onnx

    path = folder / filename
    files = [path]
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        for kv in init.external_data:
            if kv.key == "location" and (folder / kv.value) not in files:
                files.append(folder / kv.value)
    return files


def _kv_element_bytes(folder: Path, filename: str, key_name: str) -> int:
    import onnx

    model = onnx.load(str(folder / filename), load_external_data=False)
    for value in model.graph.input:
        if value.name == key_name:
            return _ELEM_BYTES.get(value.type.tensor_type.elem_type, 4)
    return 4


def model_footprint(folder: Path, context_length: int) -> Footprint:
    folder = Path(folder)
    config = json.loads((folder / "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    filename = decoder.get("filename", "model.onnx")
    layers = int(decoder["num_hidden_layers"])
    kv_heads = int(decoder.get("num_key_value_heads") or decoder["num_attention_heads"])
    head_size = int(decoder.get("head_size") or decoder["hidden_size"] // decoder["num_attention_heads"])
    key_pattern = decoder.get("inputs", {}).get("past_key_names", "past_key_values.%d.key")
    elem = _kv_element_bytes(folder, filename, key_pattern.replace("%d", "0"))
    per_token = layers * 2 * kv_heads * head_size * elem
    weights = sum(p.stat().st_size for p in _model_files(folder, filename) if p.is_file())
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    kv = per_token * int(context_length)
    return Footprint(weights, kv, weights + kv, int(context_length), per_token, size)
