"""A plan as data: each step with its declared inputs and outputs, its resources and its cache key.

``describe(steps)`` computes what the runner would: a step's cache key (``cache.py``) hashes its stage,
version, parsed config, the keys of the steps it reads from and the content of the paths its config names,
so keys are known before anything runs. Steps that are never cached have no key (""); a step reading from
one gets its key at run time (None here), from the digest of what that step produced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from controller.factory.cache import Fingerprints, StageCache, input_key, path_digests
from controller.factory.pipeline import PipelineStep, check_structure, parse_step, pipeline_json
from controller.factory.spec import Resources, values_at
from controller.factory.stage import Stage

ROW_HEADERS = ("#", "step", "stage", "inputs", "outputs", "resources", "cache key")


@dataclass
class PlannedStep:
    step: PipelineStep
    inputs: dict[str, str]  # concrete input port (config path) -> reference (an earlier step's output, a path)
    outputs: dict[str, str]  # output port -> kind ("?" after an optional one's kind: not every run makes it)
    resources: Resources
    cacheable: bool
    key: str | None  # the stage-cache key; "" = never cached; None = known at run time

    def to_dict(self) -> dict[str, Any]:
        s = self.step
        return {
            "id": s.id,
            "stage": s.stage,
            "profile": s.profile,
            "needs": list(s.needs),
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "resources": self.resources.to_dict(),
            "cacheable": self.cacheable,
            "cache_key": self.key,
            "config": s.config,
        }


@dataclass
class Plan:
    name: str
    source: str
    steps: list[PlannedStep]

    @property
    def pipeline(self) -> list[PipelineStep]:
        return [p.step for p in self.steps]

    @property
    def hash(self) -> str:
        return plan_hash(self.pipeline)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "source": self.source,
            "plan_hash": self.hash,
            "steps": [p.to_dict() for p in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(json.loads(self.to_json()), sort_keys=False, width=120)

    def rows(self) -> list[tuple[str, ...]]:
        """One row per step, in the order of ``ROW_HEADERS`` (for a table)."""
        return [
            (
                str(i + 1),
                p.step.id,
                p.step.stage,
                "\n".join(f"{port} <- {ref}" for port, ref in p.inputs.items()) or "-",
                ", ".join(n + ("?" if k.endswith("?") else "") for n, k in p.outputs.items()) or "-",
                p.resources.describe(),
                _short_key(p),
            )
            for i, p in enumerate(self.steps)
        ]


def plan_hash(steps: list[PipelineStep]) -> str:
    """sha256 of the pipeline's canonical JSON (ids, stages, configs, needs, profiles)."""
    return hashlib.sha256(pipeline_json(steps).encode()).hexdigest()


def describe(
    steps: list[PipelineStep], name: str = "", source: str = "<recipe>", fingerprints: Fingerprints | None = None
) -> Plan:
    """The plan for ``steps``: configs are parsed (errors name the step and field) and keys computed."""
    check_structure(steps, source)
    fp = fingerprints or Fingerprints()
    keys: dict[str, str | None] = {}
    stage_of: dict[str, str] = {}
    planned = []
    for step in steps:
        stage, config = parse_step(step, source)
        upstream = [(stage_of[n], keys[n]) for n in step.needs]
        keys[step.id] = _key(stage, config.model_dump(mode="json"), upstream, fp)
        stage_of[step.id] = step.stage
        spec = stage.spec()
        inputs = {path: str(v) for port in spec.inputs for path, v in values_at(step.config, port.name)}
        outputs = {p.name: p.kind + ("?" if p.optional else "") for p in spec.outputs}
        planned.append(PlannedStep(step, inputs, outputs, stage.resources_for(config), stage.cacheable, keys[step.id]))
    return Plan(name, source, planned)


def _key(stage: Stage, config: dict[str, Any], upstream: list[tuple[str, str | None]], fp: Fingerprints) -> str | None:
    """What the runner will use as the step's cache key (see ``PipelineRunner._key``)."""
    if not stage.cacheable:
        return ""
    if any(not key for _, key in upstream):
        return None  # reads from a step that is never cached: keyed by its outputs' digest at run time
    inputs = [input_key(name, str(key)) for name, key in upstream]
    return StageCache.key(stage.name, stage.version, config, inputs, path_digests(config, fp))


def _short_key(p: PlannedStep) -> str:
    if p.key is None:
        return "at run time"
    return p.key[:16] if p.key else "never cached"
