"""Inference backends behind one interface (see :mod:`agent.runtime.base`)."""

from agent.runtime.base import (
    CapabilityNotSupported,
    GenParams,
    LoadedModel,
    Message,
    ModelInfo,
    Prompt,
    Runtime,
    TokenEvent,
)
from agent.runtime.registry import get_runtime, register_runtime, runtime_names

__all__ = [
    "CapabilityNotSupported",
    "GenParams",
    "LoadedModel",
    "Message",
    "ModelInfo",
    "Prompt",
    "Runtime",
    "TokenEvent",
    "get_runtime",
    "register_runtime",
    "runtime_names",
]
