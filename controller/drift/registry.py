"""Drift detectors by name: each detector class registers itself with :func:`register_detector`.

``create_detector("page_hinkley", threshold=10.0)`` builds one; ``detector_from_state(state)`` rebuilds a
detector from its ``to_state()`` dict (the name travels inside the state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from controller.drift.base import Detector

D = TypeVar("D", bound="type[Detector]")

_DETECTORS: dict[str, type[Detector]] = {}


class UnknownDetector(NotFound):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown drift detector '{name}' (known: {', '.join(detector_names())})")


def register_detector(name: str) -> Callable[[D], D]:
    """Class decorator: makes a detector available under ``name``."""

    def wrap(cls: D) -> D:
        if name in _DETECTORS and _DETECTORS[name] is not cls:
            raise ValueError(f"drift detector '{name}' is registered twice")
        cls.name = name
        _DETECTORS[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    # Importing the modules registers the built-in detectors.
    import controller.drift.adwin
    import controller.drift.detectors
    import controller.drift.distribution  # noqa: F401


def detector_names() -> list[str]:
    _load_builtin()
    return sorted(_DETECTORS)


def detector_class(name: str) -> type[Detector]:
    _load_builtin()
    try:
        return _DETECTORS[name]
    except KeyError:
        raise UnknownDetector(name) from None


def create_detector(name: str, **params: Any) -> Detector:
    cls = detector_class(name)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"detector '{name}'", "", f"bad parameters {sorted(params)}: {exc}") from exc


def detector_from_state(state: dict[str, Any]) -> Detector:
    return detector_class(str(state.get("name", ""))).from_state(state)
