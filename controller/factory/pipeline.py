"""A pipeline is data: an ordered list of steps, each a registered stage name with its config.

A step has a unique ``id`` (a stage can appear several times: ``quantize@cpu-int4``,
``quantize@cpu-fp32``), the ids of the steps whose outputs it reads (``needs``) and the device profile it
belongs to ("" for shared steps). The planner (``plan/``) makes them from a recipe; the runner gives a step
only its needs' outputs, which is also what its cache key covers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from controller.factory.stage import Stage, StageConfig, get_stage
from shared.errors import ConfigError, NotFound, RecipeError, SlmopsError


@dataclass
class PipelineStep:
    id: str
    stage: str
    config: dict[str, Any] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    profile: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "stage": self.stage, "config": self.config, "needs": self.needs, "profile": self.profile}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineStep:
        return cls(
            data["id"],
            data["stage"],
            dict(data.get("config", {})),
            list(data.get("needs", [])),
            data.get("profile", ""),
        )


def check_structure(steps: list[PipelineStep], source: str = "recipe") -> None:
    """Unique ids; every need names an EARLIER step."""
    seen: set[str] = set()
    for step in steps:
        if step.id in seen:
            raise RecipeError(source, "stages", f"step id '{step.id}' appears twice in the pipeline")
        for need in step.needs:
            if need not in seen:
                raise RecipeError(
                    source,
                    f"stages.{step.id}.needs",
                    f"'{need}' is not an earlier step (earlier: {', '.join(sorted(seen)) or 'none'})",
                )
        seen.add(step.id)


def parse_step(step: PipelineStep, source: str = "recipe") -> tuple[Stage, StageConfig]:
    """The step's stage and parsed config; errors are RecipeErrors naming ``<step id>.<field>``."""
    try:
        stage = get_stage(step.stage)
    except NotFound as exc:
        raise RecipeError(source, f"stages.{step.id}", exc.message) from exc
    try:
        return stage, stage.parse_config(step.config, source)
    except ConfigError as exc:
        if isinstance(exc, RecipeError):
            raise
        field = exc.field.removeprefix(f"{step.stage}.").removeprefix(step.stage)
        where = f"{step.id}.{field}" if field else step.id
        raise RecipeError(source, where, exc.reason.removeprefix("Value error, ")) from exc


def validate_pipeline(steps: list[PipelineStep], extras: dict[str, Any], source: str = "recipe") -> None:
    """Everything that can fail before work starts: unknown stage, bad config, each stage's own checks."""
    check_structure(steps, source)
    extras = {**extras, "recipe_source": source}
    for step in steps:
        stage, config = parse_step(step, source)
        try:
            stage.validate(config, {**extras, "step": step})
        except ConfigError:
            raise
        except SlmopsError as exc:
            # Keep the error's kind (e.g. UnsupportedOnThisMachine) but say where it came from.
            exc.message = f"{source}: step '{step.id}': {exc.message}"
            exc.args = (exc.message,)
            raise


def pipeline_json(steps: list[PipelineStep]) -> str:
    return json.dumps([s.to_dict() for s in steps], sort_keys=True)
