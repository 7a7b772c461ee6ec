"""On-device serving: an OpenAI-compatible HTTP API in front of a swappable model (see ``service.Serving``)."""

from agent.serving.model_slot import Lease, ModelHandle, ModelSlot
from agent.serving.records import RequestRecord
from agent.serving.server import ServingServer
from agent.serving.service import HealthState, Serving, ServingConfig

__all__ = [
    "HealthState",
    "Lease",
    "ModelHandle",
    "ModelSlot",
    "RequestRecord",
    "Serving",
    "ServingConfig",
    "ServingServer",
]
