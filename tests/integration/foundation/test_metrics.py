"""The controller's Prometheus endpoint shows RPC figures and the fleet read from the database."""

from __future__ import annotations

from pathlib import Path

import httpx

from agent.daemon import Agent
from controller.core.metrics import serve_metrics
from tests.fixtures.controller import agent_settings


def test_metrics_endpoint_lists_devices_and_rpcs(controller, tmp_path: Path) -> None:
    agent = Agent(agent_settings(controller, tmp_path / "a", profile="cpu-int8"))
    agent.heartbeat_once()
    port = serve_metrics(controller.app, "127.0.0.1:0")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'slmops_devices{model="",profile="cpu-int8",status="online",version=""} 1.0' in text
    assert 'slmops_controller_rpc_seconds_count{method="Heartbeat"}' in text
    assert "slmops_telemetry_windows 0.0" in text
