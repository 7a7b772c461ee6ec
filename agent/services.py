"""What the agent runs besides heartbeats: install flow, serving and telemetry (wired in one place)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared.pb import agent_pb2

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger(__name__)


class AgentServices:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def fill_heartbeat(self, request: agent_pb2.HeartbeatRequest) -> None:
        pass

    def on_heartbeat(self, response: agent_pb2.HeartbeatResponse) -> None:
        pass
