"""The detector interface: what a drift detector declares, and all that ``controller/drift/watch.py`` calls.

A detector is one class (one module under ``controller/drift/detectors/``) registered by name with
:func:`~controller.drift.registry.register_detector`. It declares:

- ``input_type``: what it watches. :attr:`InputType.SCALAR` detectors get one float per telemetry window and
  metric (latency p95, format validity), standardized with the baseline by the watch;
  :attr:`InputType.DISTRIBUTION` detectors get the window's prompt-length histogram (bin counts);
  :attr:`InputType.SUMMARY` detectors get a drift signal's window sums (output confidence, input novelty). The
  watch routes each input to the detectors that declare its type, and never looks at names.
- ``Params``: a pydantic model of its constructor parameters (persisted with its state);
  ``Settings``: a pydantic model of the profile ``drift:`` keys it owns (validated by
  ``controller/drift/config.py``, which also knows the detector's on/off switch: the key named after it,
  default ``enabled_by_default``); and :meth:`Detector.params_for`, which turns validated settings into the
  parameters for one watched :class:`Target`.
- ``needs_reference``: whether the watch must hand it the baseline with :meth:`Detector.set_reference` when
  it is built (the reference histogram for distribution detectors).

The running state is a JSON-safe dict (:meth:`Detector.variables` / :meth:`Detector.restore`); the watch
persists :meth:`Detector.to_state` (``{"name", "params", "vars"}``) between checks and restarts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError

Direction = Literal["up", "down", "both"]
DIRECTIONS = ("up", "down", "both")


class InputType(StrEnum):
    """What a detector watches, so the watch knows what to feed it."""

    # One baseline-standardized float per window and metric: (value - baseline mean) / baseline std.
    # A reference, for detectors that need one, is the standardized baseline {"mean": 0, "std": 1, "n": n}.
    SCALAR = "scalar"
    # The window's prompt-length histogram as bin counts (list[float]); the reference is the baseline's counts.
    DISTRIBUTION = "distribution"
    # A per-request drift signal over the window (shared/signals.py): {"n", "sum", "sum_sq"}; the reference is
    # the version's {"mean", "std", "n"} measured by the factory on its validation split (or learned).
    SUMMARY = "summary"


@dataclass
class Detection:
    """A change found by one detector on one metric."""

    detector: str
    statistic: float
    threshold: float
    # "up" or "down" for scalar series; "shift" for distribution tests.
    direction: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One watched input: a metric, its kind of drift, the direction that is bad, and what it looks like."""

    metric: str
    kind: str  # latency | quality | input: the drift event's kind, and which settings apply
    direction: Direction  # the bad direction
    input_type: InputType
    edges: tuple[float, ...] = ()  # histogram bin edges (distribution inputs)


def check_direction(direction: str) -> Direction:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
    return direction  # type: ignore[return-value]


# --- configuration models -------------------------------------------------------------------------------
class DetectorParams(BaseModel):
    """A detector's constructor parameters; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorSettings(BaseModel):
    """The profile ``drift:`` keys a detector owns (flat, e.g. ``psi_threshold``); none by default.
    Give every field a ``description``: it is the key's documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SharedSettings(BaseModel):
    """Profile ``drift:`` keys that every detector may read (the rest of the keys are in ``config.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_windows: int = Field(5, gt=0, description="fewest recent windows summed into a tested histogram")
    input_min_count: int = Field(200, gt=0, description="prompts a tested (or learned) histogram must hold")
    baseline_windows: int = Field(20, gt=0, description="windows used to learn a missing baseline")
    min_instances: int = Field(5, gt=0, description="windows a scalar detector needs after a reset to alarm")


_REASONS = {
    "greater_than": "must be above {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be below {lt}",
    "less_than_equal": "must be at most {le}",
    "int_from_float": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
}


def _reason(error: Any) -> str:
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in (error.get("ctx") or {}).items()}
    kind = error["type"]
    if kind == "greater_than" and ctx.get("gt") in ("0", 0):  # as the profile docs say it
        return f"must be positive, got {error['input']!r}"
    if kind in _REASONS:
        return f"{_REASONS[kind].format(**ctx)}, got {error['input']!r}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}, got {error['input']!r}"


def config_error(source: str, exc: ValidationError, prefix: str = "", known: list[str] | None = None) -> ConfigError:
    """The first error of a pydantic validation as a :class:`ConfigError` naming the field (``prefix`` + name)."""
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        listing = f"; known: {', '.join(known)}" if known is not None else ""
        return ConfigError(source, f"{prefix}{name}", f"unknown parameter{listing}")
    return ConfigError(source, f"{prefix}{name}", _reason(error))


# --- the interface ----------------------------------------------------------------------------------------
class Detector(ABC):
    """A streaming change detector: feed one input per window with :meth:`update`, get a :class:`Detection`."""

    name: ClassVar[str] = ""  # set by register_detector
    input_type: ClassVar[InputType] = InputType.SCALAR
    Params: ClassVar[type[DetectorParams]] = DetectorParams
    Settings: ClassVar[type[DetectorSettings]] = DetectorSettings
    enabled_by_default: ClassVar[bool] = False  # the profile key named after the detector turns it on or off
    needs_reference: ClassVar[bool] = False  # the watch calls set_reference(baseline) when it builds one

    def __init__(self, params: DetectorParams | None = None, /, **kwargs: Any) -> None:
        """Takes validated parameters, or keyword arguments it validates (a :class:`ConfigError` names the
        field)."""
        if params is None:
            params = self.validate_params(kwargs)
        elif kwargs or not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} takes one {self.Params.__name__} or keyword arguments")
        self.p = params

    @classmethod
    def validate_params(cls, values: dict[str, Any]) -> DetectorParams:
        try:
            return cls.Params.model_validate(values)
        except ValidationError as exc:
            raise config_error(f"detector '{cls.name}'", exc, known=sorted(cls.Params.model_fields)) from None

    @classmethod
    @abstractmethod
    def params_for(cls, settings: Any, shared: SharedSettings, target: Target) -> DetectorParams:
        """The parameters for watching ``target``, from this detector's validated ``Settings`` and the shared
        settings (the profile's whole drift config)."""

    @classmethod
    def build(cls, settings: Any, shared: SharedSettings, target: Target) -> Self:
        return cls(cls.params_for(settings, shared, target))

    @abstractmethod
    def update(self, value: Any) -> Detection | None:
        """Feed one observation (a float or bin counts, see ``input_type``); a detection when it alarms."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the data seen so far (keep the parameters); called after a drift event."""

    @abstractmethod
    def variables(self) -> dict[str, Any]:
        """The running state, JSON-safe."""

    @abstractmethod
    def restore(self, variables: dict[str, Any]) -> None:
        """Take back a running state :meth:`variables` returned (missing keys start from zero)."""

    def set_reference(self, reference: Any) -> None:
        """Take the baseline to test against (see :class:`InputType` for its shape); only detectors that
        declare ``needs_reference`` do."""
        raise TypeError(f"drift detector '{self.name}' takes no reference (needs_reference is False)")

    # --- state, built on the methods above ---------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-safe."""
        return self.p.model_dump(mode="json")

    def reconfigured(self, params: DetectorParams) -> Self:
        """A detector with new parameters that carries on with this one's running state."""
        other = type(self)(params)
        other.restore(self.variables())
        return other

    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params(), "vars": self.variables()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("name") != cls.name:
            raise ValueError(f"state belongs to detector '{state.get('name')}', not '{cls.name}'")
        obj = cls(**state.get("params", {}))
        obj.restore(state.get("vars", {}))
        return obj
