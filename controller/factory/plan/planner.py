"""The generic planner: step requests -> pipeline steps, wired by matching declared outputs to inputs.

A request names a stage, its settings, which artifact feeds each input port and which outputs it provides
as artifacts. An artifact is a named entry on the plan's board: an earlier step's output
(``"train-student.model"``) or something the recipe gives (a path). The planner checks every port against
the stage's declaration (``Stage.inputs``/``outputs``, see ``spec.py``): the port exists, the artifact exists
and its kind is what the port takes, every required port is connected. It writes the reference into the
step's config and makes the producing step a need, so a step's needs are exactly the steps it reads from.

A later provider of a name replaces it for the requests after it (``model`` is the trained student, then the
fine-tuned one, then whatever an extra stage makes of it). Names are looked up in the current profile's
scope first (``variant`` of cpu-int4), then in the shared one; ``name@profile`` names a profile's entry.
A value the recipe already put in a port's config field wins over the planner's wiring; when it names an
earlier step's output (``"distill-data.dataset"``) that step becomes a need too.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.factory.pipeline import PipelineStep
from controller.factory.spec import Port, StageSpec, set_at, values_at
from controller.factory.stage import stage_spec
from shared.errors import NotFound, RecipeError


@dataclass(frozen=True)
class Artifact:
    """A reference on the board: ``ref`` goes into configs; ``producer`` is the step id ("" = given)."""

    ref: str
    kind: str
    producer: str = ""


@dataclass(frozen=True)
class Given:
    """An input bound to a path the recipe gives, not to a named artifact."""

    ref: str
    kind: str


Binding = str | Given | Sequence[str | Given]


class Planner:
    def __init__(self, source: str = "<recipe>") -> None:
        self.source = source
        self.steps: list[PipelineStep] = []
        self.profile = ""  # the scope new steps and artifacts belong to ("" = shared)
        self._board: dict[tuple[str, str], Artifact] = {}
        self._by_id: dict[str, tuple[PipelineStep, StageSpec]] = {}

    # --- the board ---------------------------------------------------------------------------------------
    def give(self, name: str, ref: str, kind: str) -> None:
        """Put a recipe-given reference (a path) on the board; an empty ``ref`` gives nothing."""
        if ref:
            self._board[(name, self.profile)] = Artifact(ref, kind)

    def alias(self, name: str, other: str) -> None:
        """``name`` refers to what ``other`` refers to now (nothing when ``other`` is unknown)."""
        found = self.artifact(other)
        if found is not None:
            self._board[(name, self.profile)] = found

    def artifact(self, name: str) -> Artifact | None:
        base, _, profile = name.partition("@")
        if profile:
            return self._board.get((base, profile))
        return self._board.get((name, self.profile)) or self._board.get((name, ""))

    def has(self, name: str) -> bool:
        return self.artifact(name) is not None

    def ref(self, name: str) -> str:
        found = self.artifact(name)
        return found.ref if found else ""

    def step(self, sid: str) -> PipelineStep:
        return self._by_id[sid][0]

    def producer(self, name: str) -> PipelineStep | None:
        found = self.artifact(name)
        return self.step(found.producer) if found and found.producer else None

    # --- steps -------------------------------------------------------------------------------------------
    def add(
        self,
        sid: str,
        stage: str,
        config: dict[str, Any] | None = None,
        inputs: dict[str, Binding] | None = None,
        provides: dict[str, str] | None = None,
    ) -> str:
        """Plan one step; ``inputs``: port -> artifact name(s) or :class:`Given`; ``provides``: output port ->
        artifact name. Returns ``sid``."""
        spec = self._spec(sid, stage)
        config = copy.deepcopy(config or {})
        needs: list[str] = []
        for path, binding in (inputs or {}).items():
            needs += self._bind(sid, spec, config, path, binding)
        needs += self._explicit_refs(sid, spec, config)
        self._check_connected(sid, spec, config)
        step = PipelineStep(sid, stage, config, list(dict.fromkeys(needs)), self.profile)
        self.steps.append(step)
        self._by_id[sid] = (step, spec)
        for port_name, name in (provides or {}).items():
            port = spec.output_port(port_name)
            if port is None:
                raise self._error(
                    sid, port_name, f"stage '{stage}' has no output '{port_name}' ({_ports(spec.outputs)})"
                )
            self._board[(name, self.profile)] = Artifact(f"{sid}.{port_name}", port.kind, sid)
        return sid

    def _spec(self, sid: str, stage: str) -> StageSpec:
        try:
            return stage_spec(stage)
        except NotFound as exc:
            raise RecipeError(self.source, f"stages.{sid}", exc.message) from exc

    def _bind(self, sid: str, spec: StageSpec, config: dict[str, Any], path: str, binding: Binding) -> list[str]:
        port = spec.input_port(path) or spec.input_port(f"{path}[]")
        if port is None:
            raise self._error(sid, path, f"stage '{spec.name}' has no input '{path}' ({_ports(spec.inputs)})")
        target = path.removesuffix("[]")
        if values_at(config, target):
            return []  # the recipe set it: its value wins (see _explicit_refs)
        items = list(binding) if isinstance(binding, (list, tuple)) else [binding]
        many = port.name.endswith("[]")
        if not many and len(items) != 1:
            raise self._error(sid, path, f"input '{path}' of stage '{spec.name}' takes one {port.kind}, not {items}")
        found = [self._resolve(sid, spec, port, item) for item in items]
        refs = [a.ref for a in found]
        set_at(config, target, refs if many else refs[0])
        return [a.producer for a in found if a.producer]

    def _resolve(self, sid: str, spec: StageSpec, port: Port, item: str | Given) -> Artifact:
        found = Artifact(item.ref, item.kind) if isinstance(item, Given) else self.artifact(item)
        if found is None:
            same_kind = sorted(
                {n for (n, scope), a in self._board.items() if port.accepts(a.kind) and scope in ("", self.profile)}
            )
            raise self._error(
                sid,
                port.name,
                f"step '{sid}' (stage '{spec.name}'): input '{port.name}' ({port.kind}) needs '{item}', which no "
                f"earlier step provides and the recipe does not give (available {port.kind}: "
                f"{', '.join(same_kind) or 'none'})",
            )
        if not port.accepts(found.kind):
            raise self._error(
                sid,
                port.name,
                f"step '{sid}' (stage '{spec.name}'): input '{port.name}' takes {port.kind}, "
                f"but '{item}' is {found.kind} ({found.ref})",
            )
        return found

    def _explicit_refs(self, sid: str, spec: StageSpec, config: dict[str, Any]) -> list[str]:
        """Needs for recipe-written references to earlier steps' outputs (``"train-teacher.model"``)."""
        needs = []
        for port in spec.inputs:
            for path, value in values_at(config, port.name):
                producer, _, output = str(value).rpartition(".")
                if producer not in self._by_id or str(value).endswith((".jsonl", ".json")):
                    continue  # a path (checked by the stage's validation)
                out = self._by_id[producer][1].output_port(output)
                if out is None or not port.accepts(out.kind):
                    what = f"is {out.kind}" if out else f"names no output of step '{producer}'"
                    raise self._error(
                        sid, path, f"input '{path}' ({port.kind}) of stage '{spec.name}': '{value}' {what}"
                    )
                needs.append(producer)
        return needs

    def _check_connected(self, sid: str, spec: StageSpec, config: dict[str, Any]) -> None:
        for port in spec.inputs:
            missing = [] if port.optional else _unset(config, port)
            if missing:
                raise self._error(
                    sid,
                    missing[0],
                    f"step '{sid}' (stage '{spec.name}'): input '{missing[0]}' ({port.kind}) is not connected: "
                    "nothing is bound to it and its config has no value",
                )

    def _error(self, sid: str, port: str, reason: str) -> RecipeError:
        return RecipeError(self.source, f"{sid}.{port}", reason)


def _unset(config: dict[str, Any], port: Port) -> list[str]:
    """The concrete paths of a required port that hold no value (``variants[1].model``)."""
    if ".*" in port.name:
        return []  # a mapping's values: any number, none required
    head, sep, rest = port.name.partition("[].")
    if sep:
        found = values_at(config, head)
        items = found[0][1] if found and isinstance(found[0][1], list) else []
        return [f"{head}[{i}].{rest}" for i, item in enumerate(items) if not values_at(item, rest)]
    return [] if values_at(config, port.name.removesuffix("[]")) else [port.name]


def _ports(ports: tuple[Port, ...]) -> str:
    return ", ".join(f"{p.name}: {p.kind}" for p in ports) or "none"
