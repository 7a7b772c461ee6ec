"""A real gRPC AgentService on 127.0.0.1 whose ReportTelemetry runs the controller's ingest on a real Store.

Telemetry-only and unauthenticated (the agent id comes from the x-slmops-agent-id metadata): the real
controller serves this RPC from controller/api/server.py behind its auth interceptor.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from controller.store.db import Store
from controller.telemetry.ingest import report_telemetry
from shared.errors import SlmopsError
from shared.pb import agent_pb2, agent_pb2_grpc


class TelemetryServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    def ReportTelemetry(self, request: agent_pb2.TelemetryBatch, context: grpc.ServicerContext):
        agent_id = dict(context.invocation_metadata()).get("x-slmops-agent-id", "")
        try:
            return report_telemetry(self.store, str(agent_id), request)
        except SlmopsError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), exc.message)


class TelemetryServer:
    """Start/stop a server on a fixed port, so a test can take the controller away and bring it back."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.port = 0
        self._server: grpc.Server | None = None

    def start(self, store: Store | None = None) -> TelemetryServer:
        if store is not None:
            self.store = store
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(TelemetryServicer(self.store), server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert port, f"could not bind 127.0.0.1:{self.port}"
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def telemetry_server(store: Store) -> Iterator[TelemetryServer]:
    server = TelemetryServer(store).start()
    try:
        yield server
    finally:
        server.stop()
