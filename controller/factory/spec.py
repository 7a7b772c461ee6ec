"""What a stage declares: its typed input ports, its output ports and the resources one run needs.

An input port names the config field that holds the reference to what the stage reads (``"data"``,
``"model"``; ``"variants[].model"`` for a field of every item of a list, ``"lineage_hashes.*"`` for every
value of a mapping). A reference is an earlier step's output (``"train-student.model"``) or a path. An output
port names one of the paths the stage's ``run`` returns. Kinds say what travels through a port, so the
planner can refuse a dataset where a model is expected; ``any`` accepts every kind.

Resources are what a scheduler reserves for one run (Ray's ``num_cpus``, ``num_gpus`` and ``memory``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# What travels between stages.
KINDS = {
    "dataset": "a JSONL file of prompt (and response) records",
    "hf-model": "a Hugging Face model folder (weights, config, tokenizer)",
    "onnx-model": "an onnxruntime-genai model folder (genai_config.json, model.onnx, tokenizer)",
    "adapter": "a peft LoRA adapter folder",
    "onnx-adapter": "an onnxruntime-genai .onnx_adapter file",
    "metrics": "a metrics.json written by evaluate",
    "golden": "a golden.json of prompts and expected answers",
    "predictions": "a JSONL of the evaluated model's answers",
    "published": "a published.json naming a registry version",
    "any": "any of the above",
}


@dataclass(frozen=True)
class Port:
    """One input (a config field holding a reference) or output (a name in the stage's result)."""

    name: str
    kind: str
    optional: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"port '{self.name}': unknown kind '{self.kind}' (known: {', '.join(KINDS)})")

    def matches(self, path: str) -> bool:
        """Whether the concrete config path (``variants[0].model``) is this port (``variants[].model``)."""
        generic = re.sub(r"\[\d+\]", "[]", path)
        if self.name.endswith(".*"):
            head, _, rest = generic.partition(".")
            return f"{head}.*" == self.name and bool(rest) and "." not in rest
        return generic == self.name

    def accepts(self, kind: str) -> bool:
        return "any" in (self.kind, kind) or self.kind == kind

    @property
    def field(self) -> str:
        """The top-level config field the port lives in."""
        return re.split(r"[.\[]", self.name, maxsplit=1)[0]


@dataclass(frozen=True)
class Resources:
    """What one run of the stage needs; ``memory_mb`` is a working-set estimate for scheduling."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int = 512

    def ray_options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory_mb * 1024 * 1024}

    def to_dict(self) -> dict[str, Any]:
        return {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus), "memory_mb": self.memory_mb}

    def describe(self) -> str:
        gpus = f" {self.num_gpus:g} gpu" if self.num_gpus else ""
        return f"{self.num_cpus:g} cpu{gpus} {self.memory_mb / 1024:.1f} GiB"


@dataclass(frozen=True)
class StageSpec:
    """A stage kind as the planner sees it (``Stage.spec()``)."""

    name: str
    version: str
    config_cls: type
    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()
    resources: Resources = field(default_factory=Resources)
    cacheable: bool = True

    def input_port(self, path: str) -> Port | None:
        return next((p for p in self.inputs if p.matches(path)), None)

    def output_port(self, name: str) -> Port | None:
        return next((p for p in self.outputs if p.name == name), None)

    def check(self) -> None:
        """Ports must be unique and name fields of the config class (raises ValueError)."""
        for ports in (self.inputs, self.outputs):
            names = [p.name for p in ports]
            if len(set(names)) != len(names):
                raise ValueError(f"stage '{self.name}': a port is declared twice: {names}")
        fields = set(getattr(self.config_cls, "model_fields", {}))
        missing = [p.name for p in self.inputs if p.field not in fields]
        if missing:
            raise ValueError(f"stage '{self.name}': input ports {missing} name no field of {self.config_cls.__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "inputs": [{"name": p.name, "kind": p.kind, "optional": p.optional} for p in self.inputs],
            "outputs": [{"name": p.name, "kind": p.kind, "optional": p.optional} for p in self.outputs],
            "resources": self.resources.to_dict(),
            "cacheable": self.cacheable,
        }


def values_at(config: Any, path: str) -> list[tuple[str, Any]]:
    """The (concrete path, value) pairs a port path selects in ``config``; absent values are left out."""
    found: list[tuple[str, Any]] = []
    _walk(config, re.findall(r"[^.\[\]]+|\[\]", path), "", found)
    return found


def _walk(node: Any, parts: list[str], prefix: str, found: list[tuple[str, Any]]) -> None:
    if not parts:
        if node is not None and node != "":
            found.append((prefix, node))
        return
    head, rest = parts[0], parts[1:]
    if head == "[]":
        for i, item in enumerate(node if isinstance(node, list) else []):
            _walk(item, rest, f"{prefix}[{i}]", found)
    elif head == "*":
        for key, item in (node if isinstance(node, dict) else {}).items():
            _walk(item, rest, f"{prefix}.{key}", found)
    elif isinstance(node, dict) and head in node:
        _walk(node[head], rest, f"{prefix}.{head}" if prefix else head, found)


def set_at(config: dict[str, Any], path: str, value: Any) -> None:
    """Set a concrete path (``model``, ``variants[0].model``, ``lineage_hashes.data_hash``) in ``config``;
    missing mappings on the way are created, list items must exist."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node: Any = config
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value
