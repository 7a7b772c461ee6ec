"""Drift detectors by name: each detector class registers itself with :func:`register_detector`.

This module knows no detector: ``controller/drift/detectors/__init__.py`` lists the built-in modules, and
importing ``controller.drift`` (or ``controller.drift.config``) loads them. A detector elsewhere (a plugin,
a test) registers the same way and is used by the watch and accepted by the profile config from then on.

``create_detector("page_hinkley", threshold=10.0)`` builds one; ``detector_from_state(state)`` rebuilds a
detector from its ``to_state()`` dict (the name travels inside the state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from controller.drift.base import Detector
from shared.errors import NotFound

D = TypeVar("D", bound=type[Detector])

_DETECTORS: dict[str, type[Detector]] = {}


class UnknownDetector(NotFound):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown drift detector '{name}' (known: {', '.join(detector_names())})")


def register_detector(name: str) -> Callable[[D], D]:
    """Class decorator: makes a detector available under ``name`` (also the name of its profile switch)."""

    def wrap(cls: D) -> D:
        if name in _DETECTORS and _DETECTORS[name] is not cls:
            raise ValueError(f"drift detector '{name}' is registered twice")
        cls.name = name
        _DETECTORS[name] = cls
        return cls

    return wrap


def unregister_detector(name: str) -> None:
    """Forget a detector (for tests and plugins that come and go); unknown names are ignored."""
    _DETECTORS.pop(name, None)


def detector_names() -> list[str]:
    return sorted(_DETECTORS)


def detector_classes() -> list[type[Detector]]:
    """The registered detectors in registration order (the order the watch feeds them)."""
    return list(_DETECTORS.values())


def detector_class(name: str) -> type[Detector]:
    try:
        return _DETECTORS[name]
    except KeyError:
        raise UnknownDetector(name) from None


def create_detector(name: str, **params: Any) -> Detector:
    """A detector from keyword parameters; bad ones raise :class:`ConfigError` naming the parameter."""
    return detector_class(name)(**params)


def detector_from_state(state: dict[str, Any]) -> Detector:
    return detector_class(str(state.get("name", ""))).from_state(state)
