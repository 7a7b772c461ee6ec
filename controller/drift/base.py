"""The detector interface: feed one value at a time, get a :class:`Detection` when a change is found.

Scalar detectors take one float per telemetry window (already standardized by the caller, see
``controller/drift/watch.py``); histogram detectors take the window's bin counts. Every detector's state is
a JSON-safe dict (``to_state``/``from_state``) so the monitor can persist it between checks and restarts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

Direction = Literal["up", "down", "both"]
DIRECTIONS = ("up", "down", "both")


@dataclass
class Detection:
    """A change found by one detector on one metric."""

    detector: str
    statistic: float
    threshold: float
    # "up" or "down" for scalar series; "shift" for distribution tests.
    direction: str
    details: dict[str, Any] = field(default_factory=dict)


def check_direction(direction: str) -> Direction:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
    return direction  # type: ignore[return-value]


class Detector(ABC):
    """A streaming change detector; subclasses register with ``@register_detector(name)``."""

    name: ClassVar[str] = ""
    # "scalar" (one float per window) or "histogram" (bin counts per window).
    input_type: ClassVar[str] = "scalar"

    @abstractmethod
    def update(self, value: Any) -> Detection | None:
        """Feed one observation; returns a detection when the detector raises an alarm."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the data seen so far (keep the parameters); called after a drift event."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Constructor arguments, JSON-safe."""

    @abstractmethod
    def _variables(self) -> dict[str, Any]:
        """The running state, JSON-safe."""

    @abstractmethod
    def _restore(self, variables: dict[str, Any]) -> None: ...

    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params(), "vars": self._variables()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("name") != cls.name:
            raise ValueError(f"state belongs to detector '{state.get('name')}', not '{cls.name}'")
        obj = cls(**state.get("params", {}))
        obj._restore(state.get("vars", {}))
        return obj
