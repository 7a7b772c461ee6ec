"""The recipe's ``search:`` section: what to search, what to score, what a trial may not exceed, for how long.

    search:
      profile: cpu-int4              # the target profile (default: the recipe's first); its budgets constrain
      space:                         # each dimension optional: {low, high[, log][, step]} or a list of choices
        learning_rate: {low: 0.0005, high: 0.01, log: true}
        max_steps: {low: 100, high: 400, step: 50}
        batch_size: [16, 32, 64]
        hidden_size: [64, 96, 128]   # student width (student.init); intermediate_size keeps its ratio
        num_layers: {low: 1, high: 3}  # student depth (student.init)
        lora_r: [4, 8, 16]           # finetune (method lora/qlora)
        lora_alpha: [8, 16, 32]
        lora_targets: [[q_proj, v_proj], all-linear]
        int4_block_size: [32, 64, 128]  # the target profile's int4 build
      metric: {name: accuracy, direction: maximize, limit: 0}   # evaluate's figure on the validation split
      constraints: {from_profile: true, max_latency_ms: 0, max_memory_mb: 0, max_size_mb: 0, max_parameters: 0}
      budget: {n_trials: 12, timeout_s: 0}
      sampler: {seed: 0, n_startup_trials: 4}    # TPE
      pruner: {n_startup_trials: 2, n_warmup_steps: 0, report_every: 25}   # median pruner, every N steps
      trial_steps: 0                 # cap on each trial's training steps (0: the trial's max_steps)
      on_retrain: reuse              # a drift retrain reuses the parent's best configuration, or searches again
      enqueue: [{learning_rate: 0.004, hidden_size: 64}]   # tried first (e.g. the hand-set values)

Unknown keys are errors naming the key (``search.space.foo``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Dimensions -> the recipe section (and the stage) they configure.
TRAINING_DIMS = ("learning_rate", "max_steps", "batch_size")
ARCH_DIMS = ("hidden_size", "num_layers")
LORA_DIMS = ("lora_r", "lora_alpha", "lora_targets")
BUILD_DIMS = ("int4_block_size",)
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give 'log' or 'step', not both")
        return self


class IntRange(_Strict):
    low: int
    high: int
    log: bool = False
    step: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.low <= 0:
            raise ValueError("low must be positive")
        if self.log and self.step != 1:
            raise ValueError("give 'log' or 'step', not both")
        return self


FloatDim = FloatRange | list[float]
IntDim = IntRange | list[int]


class Space(_Strict):
    learning_rate: FloatDim | None = None
    max_steps: IntDim | None = None
    batch_size: IntDim | None = None
    hidden_size: IntDim | None = None
    num_layers: IntDim | None = None
    lora_r: IntDim | None = None
    lora_alpha: IntDim | None = None
    lora_targets: list[list[str] | Literal["all-linear"]] | None = None
    int4_block_size: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> Space:
        given = self.dimensions()
        if not given:
            raise ValueError("name at least one dimension to search (e.g. learning_rate: {low: 1e-4, high: 1e-2})")
        for name in given:
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                raise ValueError(f"'{name}': the list of choices is empty")
            if isinstance(value, list) and name != "lora_targets" and any(v <= 0 for v in value):
                raise ValueError(f"'{name}': choices must be positive")
        for size in self.int4_block_size or []:
            if size not in INT4_BLOCK_SIZES:
                raise ValueError(f"int4_block_size {size} is not one of {list(INT4_BLOCK_SIZES)}")
        return self

    def dimensions(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


class Metric(_Strict):
    """A figure of the evaluate stage (``accuracy`` is exact match) on the validation split."""

    name: Literal["accuracy", "json_validity", "tokens_per_s", "latency_ms_mean"] = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    limit: int = Field(0, ge=0, description="validation prompts scored per trial (0: all)")


class Constraints(_Strict):
    """Budgets a trial's build must meet (0: none). ``from_profile``: the target profile's ``max_latency_ms``
    and ``max_memory_mb`` apply where these are 0."""

    from_profile: bool = True
    max_latency_ms: float = Field(0, ge=0)
    max_memory_mb: float = Field(0, ge=0)
    max_size_mb: float = Field(0, ge=0)
    max_parameters: int = Field(0, ge=0)


class Budget(_Strict):
    n_trials: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("give n_trials and/or timeout_s")
        return self


class Sampler(_Strict):
    kind: Literal["tpe"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(4, ge=0)


class Pruner(_Strict):
    kind: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    report_every: int = Field(25, gt=0, description="validation loss reported every N training steps")


class SearchSection(_Strict):
    profile: str = ""
    space: Space
    metric: Metric = Field(default_factory=Metric)
    constraints: Constraints = Field(default_factory=Constraints)
    budget: Budget = Field(default_factory=lambda: Budget(n_trials=10))
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    trial_steps: int = Field(0, ge=0, description="cap on each trial's training steps (0: no cap)")
    on_retrain: Literal["reuse", "search"] = "reuse"
    # Parameter sets tried first, before the sampler's (e.g. the hand-set configuration, as a baseline).
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    # Set by a drift retrain with on_retrain: reuse (the parent version's best parameters): no trials run.
    reuse_params: dict[str, Any] | None = None
    reuse_from: str = ""
    # An explicit optuna storage URL (default: next to / inside the controller's database, see storage.py).
    storage: str = ""


# --- sampling ------------------------------------------------------------------------------------------
def _targets_key(value: list[str] | str) -> str:
    return value if isinstance(value, str) else ",".join(value)


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """The trial's parameters, drawn by ``trial`` (an optuna Trial) from ``space``."""
    params: dict[str, Any] = {}
    for name in space.dimensions():
        dim = getattr(space, name)
        if name == "lora_targets":
            key = trial.suggest_categorical(name, [_targets_key(v) for v in dim])
            params[name] = key if key == "all-linear" else key.split(",")
        elif isinstance(dim, list):
            params[name] = trial.suggest_categorical(name, list(dim))
        elif isinstance(dim, FloatRange):
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            params[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log, step=dim.step)
    return params


def from_stored(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as optuna stores them (``lora_targets`` as a string) -> as stages take them."""
    out = dict(params)
    targets = out.get("lora_targets")
    if isinstance(targets, str) and targets != "all-linear":
        out["lora_targets"] = targets.split(",")
    return out


def to_stored(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    if isinstance(out.get("lora_targets"), list):
        out["lora_targets"] = _targets_key(out["lora_targets"])
    return out


# --- what a parameter set changes in each stage's config -----------------------------------------------
def split_params(params: dict[str, Any], train_section: str = "student") -> dict[str, dict[str, Any]]:
    """``{"student": {...}, "finetune": {...}, "quantize": {...}}``: the config changes per stage.
    Training dimensions go to ``train_section`` (``student``, or ``finetune`` when the student is not trained)."""
    out: dict[str, dict[str, Any]] = {"student": {}, "finetune": {}, "quantize": {}}
    for name, value in params.items():
        if name in TRAINING_DIMS:
            out[train_section][name] = value
        elif name in ARCH_DIMS:
            out["student"].setdefault("init", {})[name] = value
        elif name in LORA_DIMS:
            key = {"lora_targets": "target_modules"}.get(name, name)
            out["finetune"][key] = value
        elif name in BUILD_DIMS:
            out["quantize"][name] = value
    return out


def apply_to_config(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``changes`` applied; a new ``init.hidden_size`` keeps the feed-forward ratio."""
    out = dict(config)
    for key, value in changes.items():
        if key != "init":
            out[key] = value
            continue
        init = dict(out.get("init") or {})
        width = value.get("hidden_size")
        if width and init.get("intermediate_size") and init.get("hidden_size"):
            ratio = init["intermediate_size"] / init["hidden_size"]
            init["intermediate_size"] = max(1, math.ceil(width * ratio))
        init.update(value)
        out["init"] = init
    return out
