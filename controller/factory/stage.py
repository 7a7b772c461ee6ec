"""Factory stages as plug-ins: one file per stage under ``stages/``, each a :class:`Stage` subclass with a
validated config class, its declared ports and resources (see ``spec.py``) and one ``run`` method, registered
by name with :func:`register_stage`.

The planner (``plan/``) wires steps by those declarations; the runner (``runner.py``) gives each stage a
:class:`StageContext` with its own output folder and the outputs of earlier steps, and caches a step's
output by the hash of (stage name, stage version, config, its inputs' keys).
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.factory.spec import Port, Resources, StageSpec
from shared.errors import Cancelled, ConfigError, NotFound

__all__ = [
    "Port",
    "Progress",
    "Resources",
    "Stage",
    "StageConfig",
    "StageContext",
    "StageResult",
    "StageSpec",
    "get_stage",
    "register_stage",
    "stage_names",
    "stage_spec",
]


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass
class Progress:
    """One progress update: shown by ``slmops jobs show`` / ``--follow``."""

    stage: str
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    message: str = ""


@dataclass
class StageResult:
    """What a stage produced: named output paths (inside its work dir) and figures."""

    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a running stage may use."""

    work_dir: Path
    # Outputs of earlier stages, by "<stage name>.<output name>" and also by plain output name (latest wins).
    inputs: dict[str, Path]
    # Metrics of earlier stages by stage name.
    upstream_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Shared cache root for things reused across jobs (e.g. the demo teacher, keyed by data hash).
    cache_dir: Path = Path(".cache")
    progress: Callable[[Progress], None] = lambda _p: None
    is_cancelled: Callable[[], bool] = lambda: False
    # Free-form values the job passes in (recipe, profiles, registry handle, ...).
    extras: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> Path:
        if name not in self.inputs:
            raise NotFound(
                f"stage input '{name}' is missing: an earlier stage must produce it (have: {sorted(self.inputs)})"
            )
        return self.inputs[name]

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled("job cancelled")


class Stage(ABC):
    """Subclass, set ``name``, ``config_cls``, ``inputs``, ``outputs`` (and ``resources``), implement ``run``;
    bump ``version`` when the code's output changes. ``cacheable = False`` for stages with effects outside their
    work dir (they always run)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[StageConfig]]
    version: ClassVar[str] = "1"
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    cacheable: ClassVar[bool] = True

    @classmethod
    def spec(cls) -> StageSpec:
        return StageSpec(cls.name, cls.version, cls.config_cls, cls.inputs, cls.outputs, cls.resources, cls.cacheable)

    def resources_for(self, config: StageConfig) -> Resources:
        """What a run with ``config`` needs (override when it depends on the config, e.g. a GPU method)."""
        return self.resources

    def parse_config(self, raw: dict[str, Any], source: str = "recipe") -> StageConfig:
        try:
            return self.config_cls.model_validate(raw or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise ConfigError(source, f"{self.name}.{loc}" if loc else self.name, err["msg"]) from exc

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:  # noqa: B027
        """Checks that can fail before any work starts (missing folder, GPU-only method, ...)."""

    @abstractmethod
    def run(self, config: StageConfig, ctx: StageContext) -> StageResult: ...


_REGISTRY: dict[str, type[Stage]] = {}
_builtins_loaded = False


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` known by ``cls.name`` (its declaration is checked here)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        existing = _REGISTRY[cls.name]
        if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"stage name '{cls.name}' registered twice")
    cls.spec().check()
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_stages() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    from controller.factory import stages

    for mod in pkgutil.iter_modules(stages.__path__):
        importlib.import_module(f"{stages.__name__}.{mod.name}")
    _builtins_loaded = True


def get_stage(name: str) -> Stage:
    _load_builtin_stages()
    if name not in _REGISTRY:
        raise NotFound(f"unknown stage '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]()


def stage_spec(name: str) -> StageSpec:
    return get_stage(name).spec()


def stage_names() -> list[str]:
    _load_builtin_stages()
    return sorted(_REGISTRY)
