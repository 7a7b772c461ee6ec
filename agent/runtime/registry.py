"""Runtime backends by name ("ort-genai", "foundry-local").

Backends register themselves with :func:`register_runtime` when their module is imported; :func:`get_runtime`
imports the built-in ones on first use, so callers only need the name from the device profile.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from agent.runtime.base import Runtime
from shared.errors import NotFound

log = logging.getLogger(__name__)

_RUNTIMES: dict[str, type[Runtime]] = {}
# Built-in backends, imported lazily so an agent without Foundry Local still starts.
_BUILTIN = {"ort-genai": "agent.runtime.ort_genai", "foundry-local": "agent.runtime.foundry_local"}

R = TypeVar("R", bound=type[Runtime])


class UnknownRuntime(NotFound):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"unknown runtime backend '{name}' (known: {', '.join(sorted(known))}); "
            "set the profile's 'runtime' to one of them"
        )


def register_runtime(name: str) -> Callable[[R], R]:
    def deco(cls: R) -> R:
        _RUNTIMES[name] = cls
        cls.name = name
        return cls

    return deco


def runtime_names() -> list[str]:
    return sorted(set(_RUNTIMES) | set(_BUILTIN))


def runtime_class(name: str) -> type[Runtime]:
    if name not in _RUNTIMES and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise UnknownRuntime(name, runtime_names()) from None


def get_runtime(name: str, **options: Any) -> Runtime:
    """A new backend instance by name; ``options`` go to its constructor (e.g. Foundry's ``data_dir``)."""
    return runtime_class(name)(**options)
