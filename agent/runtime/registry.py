"""Runtime backends by name ("ort-genai", "foundry-local").

The installed backends are the entry points of the ``slmops.runtimes`` group (``pyproject.toml``; see
:func:`shared.profiles.runtime_entry_points`): name -> ``module:Class``. :func:`runtime_class` loads one on first
use, so an agent without Foundry Local still starts and callers only need the name from the device profile. A
class decorated with :func:`register_runtime` in a module that is imported counts too (tests use this).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from agent.runtime.base import Runtime
from shared import profiles
from shared.errors import NotFound

log = logging.getLogger(__name__)

_RUNTIMES: dict[str, type[Runtime]] = {}

R = TypeVar("R", bound=type[Runtime])


class UnknownRuntime(NotFound):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"unknown runtime backend '{name}' (known: {', '.join(sorted(known)) or 'none installed'}); "
            "set the profile's 'runtime' to one of them"
        )


def register_runtime(name: str) -> Callable[[R], R]:
    def deco(cls: R) -> R:
        _RUNTIMES[name] = cls
        cls.name = name
        return cls

    return deco


def runtime_names() -> list[str]:
    return sorted(set(_RUNTIMES) | set(profiles.runtime_entry_points()))


def _load_entry_point(name: str) -> type[Runtime]:
    entry = profiles.runtime_entry_points()[name]
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"runtime entry point '{name}' = '{entry.value}' is not a Runtime subclass")
    if _RUNTIMES.get(name) is not cls:
        register_runtime(name)(cls)
    log.debug("runtime backend %s loaded from %s", name, entry.value)
    return cls


def runtime_class(name: str) -> type[Runtime]:
    if name in _RUNTIMES:
        return _RUNTIMES[name]
    if name in profiles.runtime_entry_points():
        return _load_entry_point(name)
    raise UnknownRuntime(name, runtime_names())


def get_runtime(name: str, **options: Any) -> Runtime:
    """A new backend instance by name; ``options`` go to its constructor (e.g. Foundry's ``data_dir``)."""
    return runtime_class(name)(**options)
